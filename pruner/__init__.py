"""pruner: find which blocks of an SDXL-class UNet to remove, then distill the student.

The public API, imported on first use so that ``import pruner`` stays fast::

    import pruner

    result = pruner.search("tiny-sdxl", budget="50%", trials=12)        # -> SearchResult
    student_dir = pruner.distill(result.found, output="outputs/found", steps=300)
    report = pruner.evaluate(student_dir / "unet", teacher="tiny-sdxl")

The library leaves torch's thread count alone; ``with pruner.threads("auto"):`` around the calls picks what the
CLI picks (one thread on machines with two cores or fewer, 4-7x faster there) and restores it afterwards.

See :mod:`pruner.api` for the functions, :class:`pruner.Recipe` for recipes, :class:`pruner.Plan` for plans
and :class:`pruner.CostModel` for exact parameter and MAC counts of any plan.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The verbs are plain functions of pruner.api; the packages behind them have other names
# (pruner.study, pruner.distillation, pruner.evaluation), so importing one never shadows a verb.
_EXPORTS = {
    "search": "pruner.api",
    "distill": "pruner.api",
    "evaluate": "pruner.api",
    "build_student": "pruner.api",
    "cache": "pruner.api",
    "compare": "pruner.api",
    "SearchResult": "pruner.api",
    "EvalReport": "pruner.evaluation",
    "Recipe": "pruner.recipe",
    "load_recipe": "pruner.recipe",
    "save_recipe": "pruner.recipe",
    "Plan": "pruner.unet.plan",
    "list_units": "pruner.unet.units",
    "load_unet": "pruner.unet.load",
    "CostModel": "pruner.cost.model",
    "parse_budget": "pruner.budget",
    "inspect_model": "pruner.inspection",
    "PrunerError": "pruner.errors",
    "port_lora": "pruner.compat.lora",
    "export_single_file": "pruner.compat.export",
    "export_onnx": "pruner.compat.onnx_export",
    "single_file_compatibility": "pruner.compat.loaders",
    "controlnet_compatibility": "pruner.compat.controlnet",
    "threads": "pruner.runtime",
    "push": "pruner.hub",
    "port_ip_adapter": "pruner.compat.ip_adapter_port",
    "ip_adapter_compatibility": "pruner.compat.ip_adapter",
}

__all__ = [
    "CostModel",
    "EvalReport",
    "Plan",
    "PrunerError",
    "Recipe",
    "SearchResult",
    "build_student",
    "cache",
    "compare",
    "controlnet_compatibility",
    "distill",
    "evaluate",
    "export_onnx",
    "export_single_file",
    "inspect_model",
    "ip_adapter_compatibility",
    "list_units",
    "load_recipe",
    "load_unet",
    "parse_budget",
    "port_ip_adapter",
    "port_lora",
    "push",
    "save_recipe",
    "search",
    "single_file_compatibility",
    "threads",
]

if TYPE_CHECKING:
    from pruner.api import SearchResult, build_student, cache, compare, distill, evaluate, search
    from pruner.budget import parse_budget
    from pruner.compat.controlnet import controlnet_compatibility
    from pruner.compat.export import export_single_file
    from pruner.compat.ip_adapter import ip_adapter_compatibility
    from pruner.compat.ip_adapter_port import port_ip_adapter
    from pruner.compat.loaders import single_file_compatibility
    from pruner.compat.lora import port_lora
    from pruner.compat.onnx_export import export_onnx
    from pruner.cost.model import CostModel
    from pruner.errors import PrunerError
    from pruner.evaluation import EvalReport
    from pruner.hub import push
    from pruner.inspection import inspect_model
    from pruner.recipe import Recipe, load_recipe, save_recipe
    from pruner.runtime import threads
    from pruner.unet.load import load_unet
    from pruner.unet.plan import Plan
    from pruner.unet.units import list_units


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pruner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
