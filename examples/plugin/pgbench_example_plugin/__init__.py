"""An example pgbench plug-in: a task (`echo`), a reward function and an estimator (`median`),
found by pgbench through the entry points declared in pyproject.toml."""
