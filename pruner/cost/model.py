"""The cost model: parameters and MACs of any plan, composed from per-module tables in microseconds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pruner.cost.cache import cache_key, read_cached, write_cached
from pruner.cost.flops import count_macs
from pruner.cost.params import count_params, params_by_module
from pruner.cost.table import CostTable, compose, table_from_modules
from pruner.unet.config import student_config
from pruner.unet.plan import Layout, Plan, layout_of
from pruner.unet.surgery import meta_unet, sized_student
from pruner.unet.topology import Topology, topology_of
from pruner.unet.width import feed_forwards, ff_inner_sizes, hidden_size

__all__ = ["Cost", "CostModel"]


def _ff_out_bias(ff: Any) -> int:
    """Parameters of a feed-forward that do not scale with its hidden size: the output layer's bias."""
    bias = ff.net[2].bias
    return 0 if bias is None else bias.numel()


def _ff_shapes(model: nn.Module, fixed: Callable[[nn.Module], int]) -> dict[str, tuple[int, int]]:
    """Block prefix -> (hidden size, fixed cost) of its first feed-forward (a base model's are all alike)."""
    shapes: dict[str, tuple[int, int]] = {}
    for path, ff in feed_forwards(model).items():
        prefix = ".".join(path.split(".")[:1] if path.startswith("mid_block") else path.split(".")[:2])
        shapes.setdefault(prefix, (hidden_size(ff), fixed(ff)))
    return shapes


@dataclass(frozen=True)
class Cost:
    """What a student costs: parameters always, MACs per call when the model was given a resolution."""

    params: int
    macs: int | None = None


class CostModel:
    """Prices plans on one teacher architecture at one resolution and batch.

    Tables are built once per base architecture (the teacher, and the teacher less its innermost stage
    when a plan removes it); MAC tables come from one fvcore pass each and are cached on disk.
    A width-pruned teacher is priced at its own feed-forward widths: ``inner`` (its narrowed hidden
    sizes by module path, as ``unet_ff_inner`` reads them), taken from ``teacher`` when that is given.
    """

    def __init__(
        self,
        teacher_config: Mapping[str, Any],
        *,
        latent: int | None = None,
        batch: int = 1,
        seq_len: int = 77,
        teacher: nn.Module | None = None,
        inner: Mapping[str, int] | None = None,
    ) -> None:
        self.config = dict(teacher_config)
        self.latent, self.batch, self.seq_len = latent, batch, seq_len
        self.inner = dict(inner if inner is not None else ff_inner_sizes(teacher) if teacher is not None else {})
        self._teacher = teacher
        self._bases: dict[int, nn.Module] = {}
        self.topology: Topology = topology_of(teacher if teacher is not None else meta_unet(self.config))
        self._params: dict[int, CostTable] = {}
        self._macs: dict[int, CostTable] = {}

    def base_config(self, offset: int) -> dict[str, Any]:
        """Config of the base a layout with this up offset composes on (offset 1: innermost stage gone)."""
        if offset == 0:
            return self.config
        stage = Plan(frozenset({f"down_blocks.{self.topology.n_blocks - 1}"}))
        return student_config(self.config, layout_of(stage, self.topology), self.topology)

    def fresh_base(self, offset: int) -> nn.Module:
        """A new base on the meta device, with the teacher's feed-forward widths."""
        removed = {f"down_blocks.{self.topology.n_blocks - 1}"} if offset else set()
        return sized_student(self.base_config(offset), layout_of(Plan(frozenset(removed)), self.topology), self.inner)

    def base_model(self, offset: int) -> nn.Module:
        """The base a layout with this up offset composes on (meta device, shared: do not modify)."""
        if offset not in self._bases:
            self._bases[offset] = self.fresh_base(offset)
        return self._bases[offset]

    def params_table(self, offset: int = 0) -> CostTable:
        if offset not in self._params:
            model = self.base_model(offset)
            ff = _ff_shapes(model, fixed=_ff_out_bias)
            self._params[offset] = table_from_modules(
                params_by_module(model), topology_of(model), count_params(model), ff
            )
        return self._params[offset]

    def _count_macs(self, offset: int) -> dict[str, Any]:
        config = self.base_config(offset)
        widths = {"ff_inner": self.inner} if self.inner else {}  # full-width keys stay as they were
        key = cache_key(config, latent=self.latent, batch=self.batch, seq_len=self.seq_len, **widths)
        cached = read_cached("macs", key)
        if cached is not None:
            return cached
        if offset == 0 and self._teacher is not None:
            model = self._teacher
        else:
            device = next(self._teacher.parameters()).device if self._teacher is not None else "cpu"
            model = self.fresh_base(offset).to_empty(device=device)  # counted where the teacher is (a GPU)
        counts = count_macs(model, self.latent, self.batch, self.seq_len)  # type: ignore[arg-type]
        payload = {
            "total": counts.total,
            "modules": dict(counts),
            "unsupported": dict(counts.unsupported),
            "by_operator": counts.by_operator,
        }
        write_cached("macs", key, payload)
        return payload

    def feed_forward_shapes(self, offset: int) -> dict[str, tuple[int, int]]:
        """Block prefix -> (feed-forward hidden size, 0) of a base: for tables whose feed-forward cost
        is all proportional to its width (MACs, time)."""
        return _ff_shapes(self.base_model(offset), fixed=lambda _ff: 0)

    def macs_table(self, offset: int = 0) -> CostTable:
        if self.latent is None:
            raise ValueError("this cost model has no resolution: pass latent= to count MACs")
        if offset not in self._macs:
            payload = self._count_macs(offset)
            topo = topology_of(self.base_model(offset))  # fvcore counts the two matmuls, both linear in width
            self._macs[offset] = table_from_modules(
                payload["modules"], topo, payload["total"], self.feed_forward_shapes(offset)
            )
        return self._macs[offset]

    def by_operator(self) -> dict[str, int]:
        """The teacher's MACs by aten op (which ops the count is made of)."""
        return dict(self._count_macs(0)["by_operator"]) if self.latent is not None else {}

    def unsupported_ops(self) -> dict[str, int]:
        """Ops fvcore met and did not count in the teacher's pass (elementwise ops, by design)."""
        return dict(self._count_macs(0)["unsupported"]) if self.latent is not None else {}

    def layout(self, plan: Plan) -> Layout:
        return layout_of(plan, self.topology)

    def _layout_widths(self, plan_or_layout: Plan | Layout) -> tuple[Layout, dict[int, float]]:
        if isinstance(plan_or_layout, Layout):
            return plan_or_layout, {}
        return self.layout(plan_or_layout), plan_or_layout.ff_ratios

    def params(self, plan_or_layout: Plan | Layout) -> int:
        """Exact parameters; a bare layout is priced at full feed-forward width."""
        layout, widths = self._layout_widths(plan_or_layout)
        return compose(self.params_table(layout.up_offset), layout, widths)

    def macs(self, plan_or_layout: Plan | Layout) -> int:
        """MACs of one UNet call as fvcore counts them; a bare layout is priced at full feed-forward width."""
        layout, widths = self._layout_widths(plan_or_layout)
        return compose(self.macs_table(layout.up_offset), layout, widths)

    def cost(self, plan: Plan) -> Cost:
        return Cost(self.params(plan), self.macs(plan) if self.latent is not None else None)
