"""Optuna search spaces (`pgbench.sweeps.spaces`) and the sweep runner (`pgbench.sweeps.runner`)."""
