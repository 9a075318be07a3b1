"""The search: which blocks to remove, found by an Optuna multi-objective study, and its Pareto front."""

from __future__ import annotations

from pruner.callable_module import make_callable

make_callable(__name__)  # `pruner.search(...)` calls pruner.api.search
