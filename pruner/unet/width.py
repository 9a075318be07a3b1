"""Width pruning: narrow the feed-forward hidden channels of the transformer layers, per resolution level.

Depth removal (SSD-1B, Vega, KOALA) and width removal (Diff-Pruning) are two halves of one trade: at equal
MACs a student may keep a layer and narrow the feed-forwards around it. pruner prunes the hidden channels
of every ``FeedForward`` at a level to the same keep ratio through torch-pruning's ``DependencyGraph``, so
GEGLU's value and gate halves lose the same channels and the ratio asked for is the ratio obtained.
Channels are ranked with torch-pruning's group importance criteria: weight magnitude, or first-order
Taylor (|w * dL/dw|, which needs gradients of a loss on real batches).

A level is a resolution: down block ``i``, its up-block partner and, for the innermost level, the mid
block. Nothing outside a transformer layer changes shape, so the UNet's config still describes every
other module; the narrowed hidden sizes are written to ``config.json`` under ``pruner_width`` and
``pruner.load_unet`` rebuilds them. Stock ``from_pretrained`` is stopped with a message that says so
(the first down block's type is marked), instead of a wall of size-mismatch errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pruner.errors import PrunerError
from pruner.unet.topology import Topology

__all__ = [
    "IMPORTANCE",
    "WIDTH_KEY",
    "GradFn",
    "Importance",
    "check_width_levels",
    "feed_forwards",
    "ff_inner_sizes",
    "ff_level",
    "keep_count",
    "mark_width_config",
    "planned_inner_sizes",
    "prune_feed_forward",
    "prune_widths",
    "reshape_feed_forwards",
    "save_unet",
    "unmark_width_config",
]

Importance = Literal["magnitude", "taylor"]
IMPORTANCE: tuple[str, ...] = ("magnitude", "taylor")
WIDTH_KEY = "pruner_width"
_MARK = " [width-pruned by pruner: load it with pruner.load_unet(folder)]"
GradFn = Callable[[nn.Module], None]


def check_width_levels(ff_keep: Mapping[int, float], topo: Topology) -> None:
    """Every narrowed level must exist and hold transformer layers."""
    attn_levels = {i for i, b in enumerate(topo.down) if b.attn}
    attn_levels |= {topo.n_blocks - 1 - j for j, b in enumerate(topo.up) if b.attn}
    if topo.mid == "cross_attn":
        attn_levels.add(topo.n_blocks - 1)
    for level in ff_keep:
        if level not in attn_levels:
            raise PrunerError(
                f"width level {level} has no transformer layers to narrow; levels with attention: {sorted(attn_levels)}"
            )


def feed_forwards(unet: nn.Module) -> dict[str, nn.Module]:
    """Every transformer layer's ``FeedForward`` by module path (``...transformer_blocks.N.ff``)."""
    return {name: m for name, m in unet.named_modules() if name.endswith(".ff") and hasattr(m, "net")}


def _n_blocks(unet: nn.Module) -> int:
    return len(unet.down_blocks)  # type: ignore[arg-type]


def ff_level(path: str, n_blocks: int) -> int:
    """The resolution level of a module path: down block i is level i, up block j is level n-1-j, and the
    mid block is the innermost level."""
    head, index = path.split(".")[:2]
    if head == "down_blocks":
        return int(index)
    if head == "up_blocks":
        return n_blocks - 1 - int(index)
    if head == "mid_block":
        return n_blocks - 1
    raise PrunerError(f"{path} is not inside a down, up or mid block")


def _in_out(ff: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The hidden-producing projection and the hidden-consuming output of a diffusers FeedForward."""
    proj = getattr(ff.net[0], "proj", None)  # type: ignore[index]
    out = ff.net[2]  # type: ignore[index]
    if not isinstance(proj, nn.Linear) or not isinstance(out, nn.Linear):
        raise PrunerError(f"unsupported feed-forward {type(ff.net[0]).__name__}; pruner narrows GELU/GEGLU ones")  # type: ignore[index]
    return proj, out


def hidden_size(ff: nn.Module) -> int:
    return _in_out(ff)[1].in_features


def keep_count(inner: int, ratio: float) -> int:
    """Hidden channels kept at a keep ratio: rounded to the nearest channel, at least one."""
    if not 0 < ratio <= 1:
        raise PrunerError(f"feed-forward keep ratio {ratio} is outside (0, 1]; use e.g. 0.5 to keep half")
    return max(1, round(ratio * inner))


def _dependency_graph(ff: nn.Module) -> Any:
    import torch_pruning as tp

    proj, _ = _in_out(ff)
    example = torch.zeros(1, 2, proj.in_features, device=proj.weight.device, dtype=proj.weight.dtype)
    return tp.DependencyGraph().build_dependency(ff, example_inputs=example)


def _criterion(importance: str) -> Any:
    import torch_pruning as tp

    if importance == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise PrunerError(f"unknown width importance {importance!r}; use one of {', '.join(IMPORTANCE)}")


def prune_feed_forward(ff: nn.Module, keep: int, importance: str = "magnitude") -> None:
    """Keep the ``keep`` most important hidden channels of one FeedForward, in place.

    The pruning group is read off torch-pruning's dependency graph from the output layer's input
    channels, so GEGLU's value and gate halves (coupled through the split and the product) go together.
    """
    import torch_pruning as tp

    _, out = _in_out(ff)
    inner = out.in_features
    if keep >= inner:
        return
    graph = _dependency_graph(ff)
    group = graph.get_pruning_group(out, tp.prune_linear_in_channels, idxs=list(range(inner)))
    with torch.no_grad():
        scores = _criterion(importance)(group)
    if scores is None:
        raise PrunerError("taylor importance needs gradients on the feed-forward weights; none were computed")
    drop = torch.argsort(scores.float(), stable=True)[: inner - keep].tolist()
    graph.get_pruning_group(out, tp.prune_linear_in_channels, idxs=sorted(drop)).prune()


def prune_widths(
    unet: nn.Module,
    ff_keep: Mapping[int, float],
    importance: str = "magnitude",
    grad_fn: GradFn | None = None,
) -> dict[str, tuple[int, int]]:
    """Narrow every FeedForward at each level of ``ff_keep`` to its keep ratio; returns path -> (was, kept).

    Taylor importance calls ``grad_fn(unet)``, which must leave gradients of a loss on real batches in
    ``.grad`` (a distillation or denoising loss); they are cleared afterwards.
    """
    if not ff_keep:
        return {}
    _criterion(importance)
    if importance == "taylor":
        if grad_fn is None:
            raise PrunerError("taylor width importance needs calibration batches; use importance: magnitude here")
        unet.zero_grad(set_to_none=True)
        grad_fn(unet)
    n = _n_blocks(unet)
    done: dict[str, tuple[int, int]] = {}
    for path, ff in feed_forwards(unet).items():
        ratio = ff_keep.get(ff_level(path, n))
        if ratio is None:
            continue
        inner = hidden_size(ff)
        keep = keep_count(inner, ratio)
        prune_feed_forward(ff, keep, importance)
        done[path] = (inner, keep)
    unet.zero_grad(set_to_none=True)
    return done


def default_inner(unet: nn.Module, path: str) -> int:
    """The hidden size diffusers builds for a FeedForward from the config alone (4 x its width)."""
    ff = unet.get_submodule(path)
    return 4 * _in_out(ff)[0].in_features


def ff_inner_sizes(unet: nn.Module) -> dict[str, int]:
    """Hidden sizes that differ from what the config builds (empty for a depth-only student)."""
    sizes = {path: hidden_size(ff) for path, ff in feed_forwards(unet).items()}
    return {path: size for path, size in sizes.items() if size != default_inner(unet, path)}


def planned_inner_sizes(unet: nn.Module, ff_keep: Mapping[int, float]) -> dict[str, int]:
    """The hidden size every FeedForward gets under ``ff_keep`` (only those that change)."""
    n = _n_blocks(unet)
    sizes = {}
    for path, ff in feed_forwards(unet).items():
        ratio = ff_keep.get(ff_level(path, n))
        if ratio is not None and keep_count(hidden_size(ff), ratio) < hidden_size(ff):
            sizes[path] = keep_count(hidden_size(ff), ratio)
    return sizes


def reshape_feed_forwards(unet: nn.Module, inner: Mapping[str, int]) -> None:
    """Give FeedForwards the hidden sizes of a saved width-pruned student (fresh, uninitialised weights)."""
    for path, size in inner.items():
        try:
            ff: Any = unet.get_submodule(path)
        except AttributeError:
            raise PrunerError(f"{WIDTH_KEY} names {path}, which this UNet lacks; the config is damaged") from None
        proj, out = _in_out(ff)
        factor = proj.out_features // out.in_features
        kw = {"device": proj.weight.device, "dtype": proj.weight.dtype}
        ff.net[0].proj = nn.Linear(proj.in_features, factor * size, bias=proj.bias is not None, **kw)
        ff.net[2] = nn.Linear(size, out.out_features, bias=out.bias is not None, **kw)


def mark_width_config(config_path: Path, inner: Mapping[str, int]) -> None:
    """Record the hidden sizes in a saved ``config.json`` and mark it so stock loaders stop with advice."""
    config = json.loads(config_path.read_text())
    types = list(config["down_block_types"])
    config[WIDTH_KEY] = {"format": 1, "down_block_types": types, "ff_inner": dict(sorted(inner.items()))}
    config["down_block_types"] = [types[0] + _MARK, *types[1:]]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def unmark_width_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """A marked config made loadable again, and its recorded hidden sizes (empty when not width-pruned)."""
    config = dict(config)
    record = config.pop(WIDTH_KEY, None)
    if record is None:
        return config, {}
    if not isinstance(record, dict) or record.get("format") != 1:
        raise PrunerError(f"unsupported {WIDTH_KEY} record in config.json; upgrade pruner")
    config["down_block_types"] = list(record["down_block_types"])
    return config, {str(k): int(v) for k, v in record["ff_inner"].items()}


def save_unet(unet: nn.Module, folder: Path) -> None:
    """``save_pretrained`` (safetensors), plus the width record when the feed-forwards were narrowed."""
    unet.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
    inner = ff_inner_sizes(unet)
    if inner:
        mark_width_config(Path(folder) / "config.json", inner)
