"""What ``pruner inspect`` reports: a model's removable units with their parameters, MACs and latency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from pruner.compat.controlnet import controlnet_compatibility
from pruner.compat.ip_adapter import ip_adapter_compatibility
from pruner.compat.loaders import config_single_file_compatibility
from pruner.cost.latency import Latency, measure_latency
from pruner.cost.model import CostModel
from pruner.errors import PrunerError
from pruner.recipe import load_recipe
from pruner.student import resolve_recipe
from pruner.teacher import Teacher
from pruner.unet.plan import Plan
from pruner.unet.surgery import meta_unet
from pruner.unet.units import Unit, list_units
from pruner.unet.width import default_inner, ff_inner_sizes, ff_level, planned_inner_sizes, reshape_feed_forwards

__all__ = ["Inspection", "inspect_model"]


@dataclass
class Inspection:
    """A model's totals and units, with the conditions MACs and latency were taken under."""

    target: str
    source: str  # architecture, hub, pipeline, unet_folder, single_file, recipe
    params: int
    macs: int | None
    resolution: int
    latent: int
    batch: int
    units: list[Unit]
    latency: Latency | None = None
    unit_latency_ms: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    controlnet: str | None = None  # "ControlNet-compatible: yes/no, why" for a recipe or a student with one
    ip_adapter: str | None = None  # "IP-Adapter-compatible: yes/no, why" for a recipe or a student with one
    single_file: str | None = None  # "Single file: ...": which single-file loaders rebuild it

    def as_dict(self) -> dict[str, Any]:
        units = []
        for u in self.units:
            row = {"name": u.name, "kind": u.kind, "params": u.params, "macs": u.macs, "parent": u.parent,
                   "coupled": list(u.coupled), "modules": list(u.modules)}  # fmt: skip
            if self.unit_latency_ms:
                row["latency_ms"] = self.unit_latency_ms.get(u.name)
            units.append(row)
        return {
            "target": self.target, "source": self.source, "params": self.params, "macs": self.macs,
            "macs_note": "multiply-adds per UNet call, fvcore with attention counted",
            "resolution": self.resolution, "latent": self.latent, "batch": self.batch,
            "latency": self.latency.as_dict() if self.latency else None, "units": units,
            "controlnet": self.controlnet, "ip_adapter": self.ip_adapter, "single_file": self.single_file,
        }  # fmt: skip


def _level_widths(model: UNet2DConditionModel) -> dict[int, float]:
    """Feed-forward keep ratio per level of a width-pruned model (empty for a depth-only one)."""
    n = len(model.down_blocks)
    widths: dict[int, float] = {}
    for path, size in ff_inner_sizes(model).items():
        widths.setdefault(ff_level(path, n), size / default_inner(model, path))
    return widths


@dataclass(frozen=True)
class _Target:
    """What is inspected: its kind, UNet config, VAE scale, loaded model (None: priced without weights),
    feed-forward widths, and for a recipe its ControlNet verdict."""

    source: str
    config: dict[str, Any]
    vae_scale: int
    model: UNet2DConditionModel | None = None
    widths: dict[int, float] = field(default_factory=dict)
    controlnet: str | None = None
    ip_adapter: str | None = None


def _target(target: str) -> _Target:
    """Resolve the target once: a recipe (its student, priced on the recipe's teacher), else a model reference."""
    if Path(target).suffix in (".yaml", ".yml"):
        resolved = resolve_recipe(load_recipe(target), target)
        plan, topo = resolved.plan, resolved.topology
        lines = controlnet_compatibility(plan, topo).line(), ip_adapter_compatibility(plan, topo).line()
        widths = _level_widths(resolved.meta_student())
        return _Target("recipe", resolved.config, resolved.teacher.vae_scale, None, widths, *lines)
    teacher = Teacher.resolve(target)
    kind = teacher.ref.kind
    if kind in ("architecture", "hub"):
        return _Target(kind, teacher.config, teacher.vae_scale)
    model = teacher.load()
    verdicts: tuple[str | None, str | None] = (None, None)
    if kind in ("pipeline", "unet_folder"):
        verdicts = _student_lines(target)
    return _Target(kind, teacher.config, teacher.vae_scale, model, _level_widths(model), *verdicts)


def _materialised(
    config: dict[str, Any], model: UNet2DConditionModel | None, device: str, widths: dict[int, float]
) -> UNet2DConditionModel:
    """The model to count and time: the loaded one, or uninitialised real tensors (no weights needed)."""
    if model is None:
        model = meta_unet(config)
        reshape_feed_forwards(model, planned_inner_sizes(model, widths))
        model = model.to_empty(device=device)
    return model.to(device).eval()


def _student_lines(target: str) -> tuple[str | None, str | None]:
    """The ControlNet and IP-Adapter verdicts of a student folder with its recipe.yaml (None without one)."""
    from pruner.compat.target import student_recipe

    try:
        resolved = resolve_recipe(student_recipe(target)[1], target)
    except PrunerError:
        return None, None
    plan, topo = resolved.plan, resolved.topology
    return controlnet_compatibility(plan, topo).line(), ip_adapter_compatibility(plan, topo).line()


def _unit_latency(units: list[Unit], latency: Latency) -> dict[str, float]:
    return {u.name: sum(latency.modules_ms.get(m, 0.0) for m in u.modules) for u in units}


def inspect_model(
    target: str,
    *,
    resolution: int | None = None,
    batch: int = 1,
    device: str = "cpu",
    macs: bool = True,
    latency: bool = False,
    on_status: Callable[[str], None] = lambda _msg: None,
) -> Inspection:
    """Inspect a hub id, folder, single file, architecture name or recipe (then: the student it makes)."""
    found = _target(target)
    config, widths = found.config, found.widths
    resolution = resolution or int(config.get("sample_size", 64)) * found.vae_scale
    latent = max(1, resolution // found.vae_scale)
    need_real = macs or latency
    real = _materialised(config, found.model, "cpu", widths) if need_real else None
    if macs:
        on_status(
            f"counting MACs at {resolution}px with fvcore: once per architecture and size, then cached "
            "(SDXL at 1024 px: about 3 minutes on a 2-core CPU)"
        )
    # a width-pruned model is priced by composition on its full-width config (its MACs never enter the cache)
    cost = CostModel(config, latent=latent if macs else None, batch=batch, teacher=None if widths else real)
    base = Plan(ff_keep=tuple(widths.items()))
    units = list_units(cost.topology, cost, base)
    total = cost.cost(base)
    report = Inspection(target, found.source, total.params, total.macs, resolution, latent, batch, units,
                        config=config, controlnet=found.controlnet, ip_adapter=found.ip_adapter)  # fmt: skip
    report.single_file = config_single_file_compatibility(config, [str(level) for level in widths]).line()
    if latency and real is not None:
        on_status(f"timing on {device}")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        modules = sorted({m for u in units for m in u.modules})
        timed = real.to(device) if dtype == torch.float32 else real.to(device, dtype)
        report.latency = measure_latency(timed, latent, batch=batch, modules=modules)
        report.unit_latency_ms = _unit_latency(units, report.latency)
    return report
