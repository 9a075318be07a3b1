"""Modules that are also the API function of the same name.

``pruner.search``, ``pruner.distill`` and ``pruner.evaluate`` are packages/modules (the Optuna code, the
distiller, the evaluation) *and* the public functions of :mod:`pruner.api`: ``pruner.search(...)`` calls
:func:`pruner.api.search` whichever way the name was reached, so importing a submodule such as
``pruner.search.study`` (which rebinds ``pruner.search`` to the package) never shadows the function.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["make_callable"]


def make_callable(module_name: str) -> None:
    """Make the module ``module_name`` callable as ``pruner.api.<its last name>``."""
    module = sys.modules[module_name]
    function = module_name.rsplit(".", 1)[-1]

    def __call__(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module("pruner.api"), function)(*args, **kwargs)

    __call__.__doc__ = f"Call :func:`pruner.api.{function}` (see its docstring)."
    module.__class__ = type(f"CallableModule_{function}", (types.ModuleType,), {"__call__": __call__})
