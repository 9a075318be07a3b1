"""Search spaces as data (``search/*.yaml``): what a trial may remove, and how a sampled genome becomes a plan.

A genome is a handful of integers and one choice: the transformer depth of each attention module, the
number of layers of each down block, and what becomes of the mid block; with ``width: true``, also a
feed-forward keep ratio per resolution level. ``decode`` turns it into a plan by
choosing *which* teacher layers each count keeps: the first ones, an even spread, or the most important
(by each unit's sensitivity).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pruner.errors import PrunerError
from pruner.unet.plan import MID_ATTN, Plan, layer_unit
from pruner.unet.topology import Topology

__all__ = [
    "SearchSpace",
    "builtin_spaces",
    "decode",
    "genome_distributions",
    "genome_of",
    "load_space",
    "space_path",
    "suggest_genome",
    "width_levels",
]

BUILTIN_SPACES = Path(__file__).resolve().parent / "spaces"  # shipped as package data
LOCAL_SPACES = Path("search")  # a project's own spaces, by name, beside its recipes/


COMPAT_IMPLIES: dict[str, tuple[str, dict[str, bool]]] = {  # what each compat keeps, and the fields it sets
    "controlnet": ("every skip and the mid block", {"layers": False, "mid_block": False, "keep_skip_topology": True}),
    "single-file": ("every layer and width", {"layers": False, "width": False}),
    "ip-adapter": ("every cross-attention layer", {"transformer_layers": False, "layers": False}),
}


class SearchSpace(BaseModel):
    """Which kinds of unit a search may remove, and how kept layers are chosen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    name: str = "default"
    description: str = ""
    transformer_layers: bool = Field(True, description="Search the depth of every attention module.")
    layers: bool = Field(True, description="Search how many resnet(+attention) layers each down block keeps.")
    mid_attention: bool = Field(True, description="The mid block's attention may go (UNetMidBlock2D).")
    mid_block: bool = Field(True, description="The whole mid block may go.")
    select: Literal["first", "spread", "importance"] = Field(
        "importance", description="Which teacher layers a kept count keeps."
    )
    min_depth: int = Field(0, ge=0, description="Fewest transformer layers an attention module keeps.")
    keep_skip_topology: bool = Field(
        False, description="Never remove layers with skip connections (ControlNet-style adapters stay compatible)."
    )
    compat: tuple[Literal["controlnet", "single-file", "ip-adapter"], ...] = Field(
        (),
        description="Compatibilities every plan keeps: controlnet (no layer units, mid block or stage go; implies "
        "layers: false, mid_block: false and keep_skip_topology: true); single-file (every down block keeps its "
        "layers and no width is searched, so diffusers' from_single_file loads the exported student too; implies "
        "layers: false and width: false); ip-adapter (no transformer layer or layer unit goes, so every "
        "cross-attention processor keeps its position; the mid block, last in diffusers' order, may; implies "
        "transformer_layers: false and layers: false).",
    )
    width: bool = Field(False, description="Also search the feed-forward width of each resolution level.")
    width_ratios: tuple[float, ...] = Field(
        (1.0, 0.75, 0.5, 0.25), min_length=1, description="Keep ratios a level's feed-forwards may take."
    )
    width_importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="How kept feed-forward channels are chosen (torch-pruning criteria)."
    )

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for target in data.get("compat") or ():
            keeps, implied = COMPAT_IMPLIES.get(target, ("", {}))
            clash = [k for k, v in implied.items() if v is False and data.get(k) is True]
            if clash:
                raise ValueError(f"compat: [{target}] keeps {keeps}; drop {', '.join(clash)}: true")
            data = {**data, **implied}
        return data

    @field_validator("width_ratios")
    @classmethod
    def _ratios(cls, ratios: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"width_ratios {list(ratios)} must all lie in (0, 1]")
        return tuple(sorted(set(ratios), reverse=True))


def builtin_spaces() -> list[str]:
    """Names of the spaces pruner ships (``default``, ``depth-only``, ``depth-width``, ...)."""
    return sorted(p.stem for p in BUILTIN_SPACES.glob("*.yaml"))


def space_path(name_or_path: str) -> Path:
    """A space's file: a YAML path, else ``search/NAME.yaml`` in the working directory, else a built-in."""
    for path in (Path(name_or_path), LOCAL_SPACES / f"{name_or_path}.yaml", BUILTIN_SPACES / f"{name_or_path}.yaml"):
        if path.is_file():
            return path
    raise PrunerError(
        f"no search space {name_or_path!r}; give a YAML file, a name under ./search/, "
        f"or a built-in one ({', '.join(builtin_spaces())})"
    )


def load_space(name_or_path: str) -> SearchSpace:
    """A space by file path, by name under ``./search/``, or by built-in name."""
    path = space_path(name_or_path)
    try:
        return SearchSpace.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            first = f"{'.'.join(str(p) for p in err['loc']) or 'space'}: {err['msg']}"
        raise PrunerError(f"{path}: invalid search space: {first}") from exc


def _attention_modules(topo: Topology) -> list[tuple[str, int]]:
    mods = [
        (f"down_blocks.{i}.attentions.{k}", d)
        for i, b in enumerate(topo.down)
        if b.attn
        for k, d in enumerate(b.depths)
    ]
    if topo.mid == "cross_attn":
        mods.append((MID_ATTN, topo.mid_depth))
    mods += [
        (f"up_blocks.{j}.attentions.{u}", d) for j, b in enumerate(topo.up) if b.attn for u, d in enumerate(b.depths)
    ]
    return [(m, d) for m, d in mods if d > 0]


def width_levels(topo: Topology) -> list[int]:
    """Resolution levels with transformer layers (the ones a width gene can narrow)."""
    levels = {i for i, b in enumerate(topo.down) if b.attn} | {
        topo.n_blocks - 1 - j for j, b in enumerate(topo.up) if b.attn
    }
    if topo.mid == "cross_attn":
        levels.add(topo.n_blocks - 1)
    return sorted(levels)


def _mid_choices(space: SearchSpace, topo: Topology) -> list[str]:
    choices = ["full"] if topo.mid is not None else ["none"]
    if topo.mid == "cross_attn" and space.mid_attention:
        choices.append("no_attention")
    if topo.mid is not None and space.mid_block:
        choices.append("none")
    return choices


def genome_distributions(space: SearchSpace, topo: Topology) -> dict[str, BaseDistribution]:
    """The genome's parameters as Optuna distributions (the same names for every trial)."""
    genome: dict[str, BaseDistribution] = {}
    if space.transformer_layers:
        for mod, depth in _attention_modules(topo):
            genome[f"depth:{mod}"] = IntDistribution(min(space.min_depth, depth), depth)
    if space.layers and not space.keep_skip_topology:
        for i, block in enumerate(topo.down):
            if block.layers > 1:
                genome[f"layers:down_blocks.{i}"] = IntDistribution(1, block.layers)
    genome["mid"] = CategoricalDistribution(_mid_choices(space, topo))
    if space.width:
        for level in width_levels(topo):
            genome[f"width:{level}"] = CategoricalDistribution(list(space.width_ratios))
    return genome


def suggest_genome(trial: Any, space: SearchSpace, topo: Topology) -> dict[str, Any]:
    """Ask an Optuna trial for a genome."""
    genome: dict[str, Any] = {}
    for name, dist in genome_distributions(space, topo).items():
        if isinstance(dist, IntDistribution):
            genome[name] = trial.suggest_int(name, dist.low, dist.high)
        else:
            assert isinstance(dist, CategoricalDistribution)
            genome[name] = trial.suggest_categorical(name, list(dist.choices))
    return genome


def _choose(n_total: int, keep: int, how: str, score: list[float]) -> list[int]:
    """Indices of the ``keep`` of ``n_total`` items a count keeps."""
    if keep >= n_total:
        return list(range(n_total))
    if keep <= 0:
        return []
    if how == "first":
        return list(range(keep))
    if how == "spread":
        return sorted({round(k * (n_total - 1) / max(1, keep - 1)) for k in range(keep)} if keep > 1 else {0})
    return sorted(sorted(range(n_total), key=lambda k: -score[k])[:keep])


def decode(genome: dict[str, Any], space: SearchSpace, topo: Topology, sensitivity: dict[str, float]) -> Plan:
    """The plan a genome describes (not yet repaired to expressibility or budget)."""
    removed: set[str] = set()
    for key, keep in genome.items():
        if key.startswith("depth:"):
            mod = key.removeprefix("depth:")
            depth = dict(_attention_modules(topo))[mod]
            names = [f"{mod}.transformer_blocks.{m}" for m in range(depth)]
            kept = _choose(depth, keep, space.select, [sensitivity.get(n, 0.0) for n in names])
            removed |= {n for m, n in enumerate(names) if m not in kept}
        elif key.startswith("layers:"):
            i = int(key.rsplit(".", 1)[1])
            names = [layer_unit(i, k) for k in range(topo.down[i].layers)]
            kept = _choose(len(names), keep, space.select, [sensitivity.get(n, 0.0) for n in names])
            removed |= {n for k, n in enumerate(names) if k not in kept}
    if genome.get("mid") == "no_attention":
        removed.add(MID_ATTN)
    elif genome.get("mid") == "none" and topo.mid is not None:
        removed.add("mid_block")
    widths = {int(k.removeprefix("width:")): float(v) for k, v in genome.items() if k.startswith("width:")}
    return Plan(frozenset(removed), tuple(widths.items()))


def genome_of(plan: Plan, space: SearchSpace, topo: Topology) -> dict[str, Any]:
    """The genome whose counts match a plan (for enqueuing hand-made plans as trials)."""
    genome: dict[str, Any] = {}
    if space.transformer_layers:
        for mod, depth in _attention_modules(topo):
            gone = sum(f"{mod}.transformer_blocks.{m}" in plan.removed for m in range(depth))
            genome[f"depth:{mod}"] = max(min(space.min_depth, depth), depth - gone)
    if space.layers and not space.keep_skip_topology:
        for i, block in enumerate(topo.down):
            if block.layers > 1:
                genome[f"layers:down_blocks.{i}"] = block.layers - sum(
                    layer_unit(i, k) in plan.removed for k in range(block.layers)
                )
    mid = "none" if "mid_block" in plan.removed else "no_attention" if MID_ATTN in plan.removed else "full"
    genome["mid"] = mid if topo.mid is not None else "none"
    if space.width:
        ratios = plan.ff_ratios
        for level in width_levels(topo):
            genome[f"width:{level}"] = min(space.width_ratios, key=lambda r: abs(r - ratios.get(level, 1.0)))
    return genome
