"""Carry a teacher's LoRA over to a pruned student.

A student keeps the teacher's modules under new names (keeping transformer layers 0, 4 and 9 of ten makes
them the student's 0, 1 and 2), so a LoRA loaded as it is lands on the wrong layers or is dropped. The
plan's weight map (student module -> teacher module) is inverted here: each LoRA entry moves to the
student module its teacher module became, entries of removed modules are dropped, and entries whose
shapes no longer fit (a width-pruned feed-forward, a resnet whose input channels changed) are refused
with the reason. The result is written in diffusers' layout (``unet.<module>.lora_A/lora_B.weight``, as
``pipe.save_lora_weights`` writes), with each entry's alpha/rank scale folded into ``lora_B``, so
``pipe.load_lora_weights(OUT)`` loads it at the strength it had on the teacher.

Reads diffusers/PEFT files (scale from their ``lora_adapter_metadata``, or ``.alpha`` entries) and kohya
files (``lora_unet_<module>.lora_down/lora_up/alpha``, with diffusers-style or original SGM module names).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pruner.compat.sgm import sgm_module_names
from pruner.compat.target import PlanTarget, plan_target
from pruner.errors import PrunerError
from pruner.io import atomic_path, check_new_file, output_lock
from pruner.knobs import check_arguments
from pruner.recipe import Recipe
from pruner.unet.maps import resolve, weight_map

__all__ = ["LoraEntry", "PortReport", "PortedLora", "naive_lora", "port_lora", "read_lora"]

LoraSource = str | Path | Mapping[str, torch.Tensor]
_TEXT_PREFIXES = ("text_encoder.", "text_encoder_2.")


@dataclass(frozen=True)
class LoraEntry:
    """One module's low-rank update ``up @ down`` (its alpha/rank scale already folded into ``up``)."""

    down: torch.Tensor  # lora_A: (rank, in[, kh, kw])
    up: torch.Tensor  # lora_B: (out, rank[, 1, 1])

    @property
    def params(self) -> int:
        return self.down.numel() + self.up.numel()

    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the weight this update is added to."""
        return (self.up.shape[0], *self.down.shape[1:])


@dataclass(frozen=True)
class ParsedLora:
    """A LoRA file read into teacher (diffusers) module names."""

    unet: dict[str, LoraEntry]
    text: dict[str, torch.Tensor]  # diffusers-layout text-encoder entries: pruning leaves them valid
    skipped: dict[str, str]  # key or module -> why it was not read


@dataclass
class PortReport:
    """What a port carried over, dropped and refused."""

    carried: dict[str, str] = field(default_factory=dict)  # student module -> teacher module
    dropped: list[str] = field(default_factory=list)  # teacher modules the student removed
    refused: dict[str, str] = field(default_factory=dict)  # teacher module -> reason
    params_total: int = 0
    params_carried: int = 0
    text_entries: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        n = len(self.carried) + len(self.dropped) + len(self.refused)
        share = self.params_carried / self.params_total if self.params_total else 0.0
        lines = [
            f"carried over {len(self.carried)} of {n} UNet LoRA entries ({share:.1%} of the LoRA's UNet parameters)",
            f"dropped {len(self.dropped)} entries of modules the student removed",
        ]
        for reason, count in Counter(self.refused.values()).most_common():
            lines.append(f"refused {count} entries: {reason}")
        if self.text_entries:
            lines.append(
                f"kept {self.text_entries} text-encoder entries as they are (pruning leaves the encoders alone)"
            )
        for reason, count in Counter(self.skipped.values()).most_common():
            lines.append(f"skipped {count} entries: {reason}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PortedLora:
    """A LoRA in diffusers' layout for the student, and the report of how it was made."""

    state: dict[str, torch.Tensor]
    report: PortReport
    path: Path | None = None


# --- reading ------------------------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise PrunerError(f"LoRA file {path} does not exist; give the .safetensors file the LoRA was saved as")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise PrunerError(f"{path} is not a readable safetensors LoRA ({exc}); re-download or re-save it") from exc


def _lora_file(source: Path) -> Path:
    return source / "pytorch_lora_weights.safetensors" if source.is_dir() else source


def _adapter_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """The ``lora_adapter_metadata`` a diffusers file carries (empty when none), checked: a JSON object."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise PrunerError(
            f"the LoRA's lora_adapter_metadata is not JSON ({exc}); re-save the LoRA with diffusers"
        ) from exc
    if not isinstance(cfg, dict):
        raise PrunerError(f"the LoRA's lora_adapter_metadata is a {type(cfg).__name__}, not a JSON object of "
                          "LoRA settings; re-save the LoRA with diffusers")  # fmt: skip
    return cfg


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float: a number, or a tensor holding exactly one number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise PrunerError(f"{what} holds {value.numel()} values, not one; the LoRA file is damaged")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrunerError(f"{what} is {value!r}, not a number; the LoRA file is damaged")
    return float(value)


def _peft_scale(cfg: Mapping[str, Any], module: str, rank: int) -> float:
    """alpha / rank from a diffusers file's ``lora_adapter_metadata`` (1 when there is none, as diffusers does)."""
    if not cfg:
        return 1.0
    alpha = cfg.get("unet.lora_alpha", rank)
    patterns = cfg.get("unet.alpha_pattern") or {}
    for pattern, value in patterns.items() if isinstance(patterns, dict) else ():
        if module == pattern or module.endswith("." + pattern):
            alpha = value
    root = math.sqrt(rank) if cfg.get("unet.use_rslora") else rank
    return _number(alpha, f"lora_alpha of unet.{module} in the metadata") / root


def _check_pair(name: str, down: torch.Tensor, up: torch.Tensor) -> int:
    """The rank of a lora_A (down) / lora_B (up) pair that can be loaded; a one-line error naming ``name``
    otherwise (ranks that differ, rank 0, a conv update with a kernel on its up side, wrong dimensions)."""
    if down.ndim not in (2, 4) or up.ndim != down.ndim:
        raise PrunerError(f"LoRA entry {name}: lora_A has {down.ndim} dimensions and lora_B {up.ndim}; expected "
                          "2 and 2 (linear) or 4 and 4 (conv); the file is damaged")  # fmt: skip
    rank = down.shape[0]
    if rank == 0 or up.shape[1] != rank:
        raise PrunerError(f"LoRA entry {name}: lora_A has rank {rank} and lora_B rank {up.shape[1]}; a loadable "
                          "pair has one rank of at least 1 on both sides; the file is damaged")  # fmt: skip
    if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
        raise PrunerError(f"LoRA entry {name}: lora_B has a {tuple(up.shape[2:])} kernel, expected (1, 1)")
    return rank


def _entry(down: torch.Tensor, up: torch.Tensor, scale: float) -> LoraEntry:
    return LoraEntry(down.contiguous(), (up * scale).to(up.dtype).contiguous())


def _scale(alpha: torch.Tensor | None, rank: int, name: str, default: float) -> float:
    """alpha / rank from an ``.alpha`` entry; ``default`` when there is none."""
    return _number(alpha, f"alpha of LoRA entry {name}") / rank if alpha is not None else default


def _check_text_pairs(text: Mapping[str, torch.Tensor]) -> None:
    """Text-encoder entries are written as they are: each lora_A must still match its lora_B."""
    for key, down in text.items():
        if key.endswith(".lora_A.weight") and (up := text.get(key.replace(".lora_A.", ".lora_B."))) is not None:
            _check_pair(key.removesuffix(".lora_A.weight"), down, up)


def _parse_diffusers(state: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> ParsedLora:
    unet: dict[str, LoraEntry] = {}
    text: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    cfg = _adapter_metadata(meta)
    for key, tensor in state.items():
        if key.startswith(_TEXT_PREFIXES):
            text[key] = tensor
        elif key.startswith("unet.") and key.endswith(".lora_A.weight"):
            module = key[len("unet.") : -len(".lora_A.weight")]
            up = state.get(f"unet.{module}.lora_B.weight")
            if up is None:
                skipped[key] = "lora_A without its lora_B"
                continue
            rank = _check_pair(f"unet.{module}", tensor, up)
            scale = _scale(state.get(f"unet.{module}.alpha"), rank, f"unet.{module}", _peft_scale(cfg, module, rank))
            unet[module] = _entry(tensor, up, scale)
        elif not key.endswith((".lora_B.weight", ".alpha")):
            skipped[key] = "not a LoRA A/B pair (DoRA, biases and LyCORIS variants are not carried)"
    _check_text_pairs(text)
    return ParsedLora(unet, text, skipped)


def _kohya_names(teacher: nn.Module) -> dict[str, str]:
    """kohya module name (underscored diffusers or SGM path) -> diffusers module path of the teacher."""
    out: dict[str, str] = {}
    for path, sgm in sgm_module_names(teacher).items():
        out[path.replace(".", "_")] = path
        out[sgm.replace(".", "_")] = path
    return out


def _parse_kohya(state: Mapping[str, torch.Tensor], teacher: nn.Module) -> ParsedLora:
    names = _kohya_names(teacher)
    unet: dict[str, LoraEntry] = {}
    skipped: dict[str, str] = {}
    for key, tensor in state.items():
        if not key.endswith(".lora_down.weight"):
            if not key.endswith((".lora_up.weight", ".alpha")):
                skipped[key] = "not a lora_down/lora_up pair (DoRA and LyCORIS variants are not carried)"
            continue
        stem = key[: -len(".lora_down.weight")]
        if stem.startswith("lora_te"):
            skipped[stem] = "kohya text-encoder entry (convert the text-encoder part with diffusers first)"
            continue
        module = names.get(stem[len("lora_unet_") :]) if stem.startswith("lora_unet_") else None
        up = state.get(f"{stem}.lora_up.weight")
        if module is None or up is None:
            skipped[stem] = "names no module of the teacher" if up is not None else "lora_down without its lora_up"
            continue
        rank = _check_pair(stem, tensor, up)
        unet[module] = _entry(tensor, up, _scale(state.get(f"{stem}.alpha"), rank, stem, 1.0))
    return ParsedLora(unet, {}, skipped)


def read_lora(source: LoraSource, teacher: nn.Module) -> ParsedLora:
    """Read a LoRA (file, folder with ``pytorch_lora_weights.safetensors``, or state dict) into the
    teacher's diffusers module names. ``teacher`` may live on the meta device: only its names are read."""
    if isinstance(source, Mapping):
        state, meta = dict(source), dict[str, str]()
    else:
        state, meta = _read_file(_lora_file(Path(source)))
    if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in state):
        parsed = _parse_kohya(state, teacher)
    else:
        parsed = _parse_diffusers(state, meta)
    if not parsed.unet and not parsed.text:
        raise PrunerError(
            "found no LoRA entries this pruner reads: expected unet.<module>.lora_A/lora_B.weight (diffusers) "
            "or lora_unet_<module>.lora_down/lora_up.weight (kohya)"
        )
    return parsed


# --- porting ------------------------------------------------------------------------------------------


def _weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {p: tuple(m.weight.shape) for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _refusal(module: str, want: tuple[int, ...], have: tuple[int, ...]) -> str:
    if ".ff." in module:
        return "the feed-forward is narrowed by width pruning, so a teacher-width update no longer fits"
    return f"the student's module has other channels than its teacher module ({have} vs {want})"


def _port(parsed: ParsedLora, target: PlanTarget, inverse: Mapping[str, str]) -> PortedLora:
    student_shapes = _weight_shapes(target.student)
    teacher_shapes = _weight_shapes(target.teacher)
    report = PortReport(text_entries=len(parsed.text), skipped=dict(parsed.skipped))
    state: dict[str, torch.Tensor] = dict(parsed.text)
    for module, entry in parsed.unet.items():
        report.params_total += entry.params
        if module not in teacher_shapes or teacher_shapes[module] != entry.weight_shape():
            report.refused[module] = "the teacher has no module of this name and shape (a LoRA for another model?)"
            continue
        student = inverse.get(module)
        if student is None or student not in student_shapes:
            report.dropped.append(module)
            continue
        if student_shapes[student] != entry.weight_shape():
            report.refused[module] = _refusal(student, entry.weight_shape(), student_shapes[student])
            continue
        report.carried[student] = module
        report.params_carried += entry.params
        state[f"unet.{student}.lora_A.weight"] = entry.down
        state[f"unet.{student}.lora_B.weight"] = entry.up
    if parsed.unet and len(report.refused) == len(parsed.unet) and not report.carried:
        raise PrunerError(
            f"none of the LoRA's {len(parsed.unet)} UNet entries fits teacher {target.teacher_name}; "
            "was it made for another model?"
        )
    return PortedLora(state, report)


def _check_out(out: Path) -> Path:
    return check_new_file(out if out.suffix == ".safetensors" else out / "pytorch_lora_weights.safetensors")


def _write(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write the ported LoRA to ``path``, which this run owns while it writes (another run's file is not replaced)."""
    with output_lock(path, "--out"):
        _check_out(path)
        with atomic_path(path, needed=sum(t.nbytes for t in state.values())) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})


def port_lora(
    lora: LoraSource,
    *,
    student: str | Path | None = None,
    recipe: Recipe | str | Path | None = None,
    out: str | Path | None = None,
) -> PortedLora:
    """Port a teacher's LoRA to the student a plan makes of it.

    ``student``: a student folder (with the ``recipe.yaml`` pruner writes beside it); or ``recipe``: a
    recipe file or ``Recipe``. ``out``: a ``.safetensors`` file or a folder (then
    ``pytorch_lora_weights.safetensors`` in it) to write the ported LoRA to, in diffusers' layout.
    """
    check_arguments(port_lora, locals())  # types before any reading: PrunerError naming the parameter
    path = _check_out(Path(out)) if out is not None else None
    target = plan_target(student=student, recipe=recipe)
    wmap = weight_map(target.layout)
    inverse = {resolve(s, wmap): s for s in _weight_shapes(target.student)}
    ported = _port(read_lora(lora, target.teacher), target, inverse)
    if path is not None:
        _write(ported.state, path)
        return PortedLora(ported.state, ported.report, path)
    return ported


def naive_lora(
    lora: LoraSource, *, student: str | Path | None = None, recipe: Recipe | str | Path | None = None
) -> PortedLora:
    """The LoRA loaded as it is (no renaming): what a user gets without pruner. Entries land on whatever
    student module has the teacher module's name and shape, and the rest are lost. For comparisons."""
    target = plan_target(student=student, recipe=recipe)
    inverse = {s: s for s in _weight_shapes(target.student)}
    return _port(read_lora(lora, target.teacher), target, inverse)
