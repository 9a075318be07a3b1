"""The search: which blocks to remove, found by an Optuna multi-objective study, and its Pareto front."""
