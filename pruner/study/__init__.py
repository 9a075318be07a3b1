"""The search's machinery: the space, samplers, proxy fidelities, the Optuna study and its Pareto front.

The verb is :func:`pruner.search`; this package is what it runs (as Optuna's ``optuna.study`` package
sits behind ``optuna.create_study``).
"""
