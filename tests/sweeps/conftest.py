"""Fixtures of the sweep tests (the PostgreSQL server is in tests/conftest.py)."""

import pytest


@pytest.fixture
def sweep_values(run_overrides, tmp_path):
    """Overrides of a fast sweep on the micro policy."""
    values = run_overrides | {
        "trainer.steps": "2",
        "eval.every": "1",
        "eval.size": "8",
        "output_dir": str(tmp_path / "sweep"),
    }
    values.pop("checkpoint.every")
    return values
