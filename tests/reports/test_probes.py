import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pgbench.errors import ConfigError
from pgbench.reports import probes
from pgbench.reports.probes import Probe


def scores_of(columns: dict[str, list[float]], task: str = "arith") -> pd.DataFrame:
    rows = [(task, c, s, v) for c, values in columns.items() for s, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["task", "estimator", "seed", "value"])


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """The two-sided paired t-test's power, by hand (noncentral t)."""
    crit, delta = sps.t.ppf(1 - alpha / 2, n - 1), effect / sd * math.sqrt(n)
    return sps.nct.sf(crit, n - 1, delta) + sps.nct.cdf(-crit, n - 1, delta)


BASE = [40.0, 41.0, 39.5, 40.5, 40.2, 39.8]
NOISE = [0.3, -0.2, 0.1, -0.4, 0.25, -0.05]


def test_probes_are_judged_holm_adjusted_with_outcomes_mde_and_seeds_needed():
    columns = {
        "rloo_off5": [b + 3 + e for b, e in zip(BASE, NOISE, strict=True)],  # clearly better
        "reinforce_off5": BASE,
        "grpo": [b + e for b, e in zip(BASE, NOISE, strict=True)],  # the same within 0.4
        "grpo_x10": BASE,
        "rloo_perm": [b - 5 for b in BASE],
        "rloo": [b + 0.1 + e for b, e in zip(BASE, NOISE, strict=True)],  # a small difference
    }
    found = [
        Probe("offset", "arith", "rloo_off5", "reinforce_off5", "a better", "Williams 1992"),
        Probe("scale", "arith", "grpo_x10", "grpo", "equivalent", "theory"),
        Probe("permuted", "arith", "rloo_perm", "rloo", "not a better", "negative control"),
        Probe("small", "arith", "rloo", "reinforce_off5", "a better", "made up"),
    ]
    table = probes.judge(found, scores_of(columns), {"arith": 2.0}).set_index("probe")
    diffs = np.array(columns["rloo_off5"]) - np.array(BASE)
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(6))
    assert table.loc["offset", "p"] == pytest.approx(2 * sps.t.sf(t, 5))
    assert table.loc["offset", "effect"] == pytest.approx(3 + np.mean(NOISE))
    # Holm over 4: the smallest p times 4, the next times 3 (at least the one before)
    ps = table.p.sort_values()
    assert table.loc[ps.index[0], "p_holm"] == pytest.approx(min(1, 4 * ps.iloc[0]))
    assert table.loc[ps.index[1], "p_holm"] == pytest.approx(
        min(1, max(4 * ps.iloc[0], 3 * ps.iloc[1]))
    )
    assert table.loc["offset", "outcome"] == "detected"
    assert table.loc["scale", "outcome"] == "detected"  # TOST within ±2
    assert table.loc["permuted", "outcome"] == "passed"  # clearly worse: not better
    small = table.loc["small"]
    assert small.outcome == "blind spot"
    sd = np.std(NOISE, ddof=1)
    # the MDE is detected 80% of the time at the first Holm level, alpha / 4
    assert power(small.mde, sd, 6, 0.05 / 4) == pytest.approx(0.8, abs=1e-3)
    # seeds needed: the first n at which the observed effect has 80% power
    n = int(small.seeds_needed)
    assert (
        power(abs(small.effect), sd, n, 0.05 / 4)
        >= 0.8
        > power(abs(small.effect), sd, n - 1, 0.05 / 4)
    )


def test_identical_runs_are_equivalent_exactly():
    probe = Probe("same", "arith", "rloo_off5", "rloo", "equivalent", "Kool et al. 2019")
    table = probes.judge([probe], scores_of({"rloo_off5": BASE, "rloo": BASE}), {"arith": 2.0})
    assert table.p.tolist() == [0.0] and table.outcome.tolist() == ["detected"]


def test_a_negative_control_fails_when_a_is_found_better():
    columns = {"perm": [b + 4 + e for b, e in zip(BASE, NOISE, strict=True)], "plain": BASE}
    probe = Probe("perm", "arith", "perm", "plain", "not a better", "negative control")
    table = probes.judge([probe], scores_of(columns), {"arith": 2.0})
    assert table.outcome.tolist() == ["failed"]


def test_probe_tables_are_checked():
    table = {"task": "arith", "a": "x", "b": "y", "expect": "a better", "source": "s"}
    assert probes.parse({"p": table}, "probes.toml") == [
        Probe("p", "arith", "x", "y", "a better", "s")
    ]
    with pytest.raises(ConfigError, match=r"expect = 'bigger'; valid: \['a better'"):
        probes.parse({"p": table | {"expect": "bigger"}}, "probes.toml")
    with pytest.raises(ConfigError, match=r"\[probe.p\] needs exactly"):
        probes.parse({"p": {"task": "arith"}}, "probes.toml")
    with pytest.raises(ConfigError, match="names nope, not a column of arith"):
        probes.judge(
            [Probe("p", "arith", "nope", "x", "a better", "s")],
            scores_of({"x": BASE}),
            {},
        )


def test_the_property_card_is_each_columns_paired_change_from_its_estimator(tmp_path):
    columns = {
        "rloo": BASE,
        "rloo_flip": [b - 2 + e for b, e in zip(BASE, NOISE, strict=True)],
        "grpo": BASE,
        "grpo_flip": [b - 1 for b in BASE],
    }
    properties = {"rloo_flip": ("rloo", "flip=0.2"), "grpo_flip": ("grpo", "flip=0.2")}
    lines, figures = probes.write(tmp_path, [], scores_of(columns), {}, properties)
    card = pd.read_csv(tmp_path / "card.csv").set_index("estimator")
    assert card.loc["rloo", "effect"] == pytest.approx(-2 + np.mean(NOISE))
    half = sps.t.ppf(0.975, 5) * np.std(NOISE, ddof=1) / math.sqrt(6)
    assert card.loc["rloo", "ci_high"] == pytest.approx(-2 + np.mean(NOISE) + half)
    assert card.loc["grpo", "effect"] == pytest.approx(-1.0)
    assert figures == [tmp_path / "card.png"] and figures[0].is_file()
    assert lines[0] == "## Property card"
    assert not (tmp_path / "probes.csv").exists()  # no probe declared
