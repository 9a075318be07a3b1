"""The cost model: exact parameters, MACs counted by fvcore with attention, measured latency."""

from __future__ import annotations

from pruner.cost.flops import MATMUL_CLASS_OPS, MacCount, count_macs, dummy_inputs
from pruner.cost.model import Cost, CostModel
from pruner.cost.params import count_params, params_by_module
from pruner.cost.table import CostTable, compose, table_from_modules

__all__ = [
    "MATMUL_CLASS_OPS",
    "Cost",
    "CostModel",
    "CostTable",
    "MacCount",
    "compose",
    "count_macs",
    "count_params",
    "dummy_inputs",
    "params_by_module",
    "table_from_modules",
]
