"""The cost model: parameters and MACs of any plan, composed from per-module tables in microseconds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pruner.cost.cache import cache_key, read_cached, write_cached
from pruner.cost.flops import count_macs
from pruner.cost.params import count_params, params_by_module
from pruner.cost.table import CostTable, compose, table_from_modules
from pruner.unet.config import student_config
from pruner.unet.plan import Layout, Plan, layout_of
from pruner.unet.surgery import meta_unet
from pruner.unet.topology import Topology, topology_of

__all__ = ["Cost", "CostModel"]


@dataclass(frozen=True)
class Cost:
    """What a student costs: parameters always, MACs per call when the model was given a resolution."""

    params: int
    macs: int | None = None


class CostModel:
    """Prices plans on one teacher architecture at one resolution and batch.

    Tables are built once per base architecture (the teacher, and the teacher less its innermost stage
    when a plan removes it); MAC tables come from one fvcore pass each and are cached on disk.
    """

    def __init__(
        self,
        teacher_config: Mapping[str, Any],
        *,
        latent: int | None = None,
        batch: int = 1,
        seq_len: int = 77,
        teacher: nn.Module | None = None,
    ) -> None:
        self.config = dict(teacher_config)
        self.latent, self.batch, self.seq_len = latent, batch, seq_len
        self.topology: Topology = topology_of(teacher if teacher is not None else meta_unet(self.config))
        self._teacher = teacher
        self._params: dict[int, CostTable] = {}
        self._macs: dict[int, CostTable] = {}

    def base_config(self, offset: int) -> dict[str, Any]:
        """Config of the base a layout with this up offset composes on (offset 1: innermost stage gone)."""
        if offset == 0:
            return self.config
        stage = Plan(frozenset({f"down_blocks.{self.topology.n_blocks - 1}"}))
        return student_config(self.config, layout_of(stage, self.topology), self.topology)

    def params_table(self, offset: int = 0) -> CostTable:
        if offset not in self._params:
            model = meta_unet(self.base_config(offset))
            self._params[offset] = table_from_modules(params_by_module(model), topology_of(model), count_params(model))
        return self._params[offset]

    def _count_macs(self, offset: int) -> dict[str, Any]:
        config = self.base_config(offset)
        key = cache_key(config, latent=self.latent, batch=self.batch, seq_len=self.seq_len)
        cached = read_cached("macs", key)
        if cached is not None:
            return cached
        model = self._teacher if offset == 0 and self._teacher is not None else meta_unet(config).to_empty(device="cpu")
        counts = count_macs(model, self.latent, self.batch, self.seq_len)  # type: ignore[arg-type]
        payload = {
            "total": counts.total,
            "modules": dict(counts),
            "unsupported": dict(counts.unsupported),
            "by_operator": counts.by_operator,
        }
        write_cached("macs", key, payload)
        return payload

    def macs_table(self, offset: int = 0) -> CostTable:
        if self.latent is None:
            raise ValueError("this cost model has no resolution: pass latent= to count MACs")
        if offset not in self._macs:
            payload = self._count_macs(offset)
            topo = self.topology if offset == 0 else topology_of(meta_unet(self.base_config(offset)))
            self._macs[offset] = table_from_modules(payload["modules"], topo, payload["total"])
        return self._macs[offset]

    def by_operator(self) -> dict[str, int]:
        """The teacher's MACs by aten op (which ops the count is made of)."""
        return dict(self._count_macs(0)["by_operator"]) if self.latent is not None else {}

    def unsupported_ops(self) -> dict[str, int]:
        """Ops fvcore met and did not count in the teacher's pass (elementwise ops, by design)."""
        return dict(self._count_macs(0)["unsupported"]) if self.latent is not None else {}

    def layout(self, plan: Plan) -> Layout:
        return layout_of(plan, self.topology)

    def params(self, plan_or_layout: Plan | Layout) -> int:
        layout = plan_or_layout if isinstance(plan_or_layout, Layout) else self.layout(plan_or_layout)
        return compose(self.params_table(layout.up_offset), layout)

    def macs(self, plan_or_layout: Plan | Layout) -> int:
        layout = plan_or_layout if isinstance(plan_or_layout, Layout) else self.layout(plan_or_layout)
        return compose(self.macs_table(layout.up_offset), layout)

    def cost(self, plan: Plan) -> Cost:
        layout = self.layout(plan)
        return Cost(self.params(layout), self.macs(layout) if self.latent is not None else None)
