"""``port_ip_adapter``: a teacher's IP-Adapter renumbered for any depth-pruned student.

The student's k-th cross-attention processor gets the entries of the teacher processor it was initialised
from, and entries of removed layers are dropped (a processor keeps its hidden size under depth pruning, so
every kept entry fits). Why positions matter: :mod:`pruner.compat.ip_adapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pruner.compat.ip_adapter import cross_attention_processors, student_sources
from pruner.errors import PrunerError

if TYPE_CHECKING:
    from pruner.recipe import Recipe

__all__ = ["port_ip_adapter"]


def _read_adapter(source: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An IP-Adapter as flat ``image_proj.*`` / ``ip_adapter.N.*`` tensors, from a safetensors file, a flat
    dict, or the nested ``{"image_proj": {...}, "ip_adapter": {...}}`` dict diffusers loads."""
    if isinstance(source, Mapping):
        if all(isinstance(v, Mapping) for v in source.values()):
            return {f"{group}.{k}": v for group, sub in source.items() for k, v in sub.items()}
        return dict(source)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(source))
    except (SafetensorError, OSError) as exc:
        raise PrunerError(f"{source} is not a readable IP-Adapter .safetensors file ({exc})") from exc


def port_ip_adapter(
    adapter: str | Path | Mapping[str, Any],
    *,
    student: str | Path | None = None,
    recipe: Recipe | str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """A teacher's IP-Adapter renumbered for the student a plan makes of it, as ``load_ip_adapter`` takes it.

    ``adapter``: a ``.safetensors`` file (``image_proj.*``, ``ip_adapter.N.to_k_ip.weight``) or its state dict.
    ``student`` (a folder with its ``recipe.yaml``) or ``recipe`` gives the plan. ``out``: also write it there
    (``.safetensors``, flat keys, for ``load_ip_adapter(folder, subfolder="", weight_name=name)``).
    """
    from pruner.compat.target import plan_target

    flat = _read_adapter(adapter)
    target = plan_target(student=student, recipe=recipe)
    teacher = cross_attention_processors(target.resolved.topology)
    if not any(k.startswith(f"ip_adapter.{2 * len(teacher) - 1}.") for k in flat):
        raise PrunerError(f"the IP-Adapter has no entries for the teacher's {len(teacher)} cross-attention processors; "
                          "is it made for another model?")  # fmt: skip
    ported = {"image_proj": {k.removeprefix("image_proj."): v for k, v in flat.items() if k.startswith("image_proj.")}}
    ported["ip_adapter"] = {}
    for k, (_, source) in enumerate(student_sources(target.layout)):
        t = teacher.index(source)
        for name in ("to_k_ip.weight", "to_v_ip.weight"):
            ported["ip_adapter"][f"{2 * k + 1}.{name}"] = flat[f"ip_adapter.{2 * t + 1}.{name}"]
    if out is not None:
        _write(ported, Path(out))
    return ported


def _write(ported: dict[str, dict[str, torch.Tensor]], out: Path) -> None:
    from safetensors.torch import save_file

    from pruner.io import atomic_path, check_output_file

    if out.suffix != ".safetensors":
        raise PrunerError(f"out {out} must end in .safetensors")
    check_output_file(out, "out")
    flat = {f"{group}.{k}": v.contiguous() for group, sub in ported.items() for k, v in sub.items()}
    with atomic_path(out) as tmp:
        save_file(flat, str(tmp))
