import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pgbench import estimators
from pgbench.reports import render, stats

RESAMPLES = 200  # figures only need some interval, not a precise one

# 1 task x 2 estimators x 3 seeds; "dr_grpo" is a variant label, not a registered estimator
SCORES = pd.DataFrame(
    [
        {"task": "t1", "estimator": estimator, "seed": seed, "value": value}
        for estimator, values in {"dr_grpo": [10.0, 12.0, 17.0], "rloo": [9.0, 8.0, 7.0]}.items()
        for seed, value in enumerate(values)
    ]
)

# hand-made leaderboard rows: every column distinct, so plotting the wrong one shows
BOARD = pd.DataFrame(
    [
        ["t1", "rloo", 3, 8.0, 7.5, 6.0, 9.5, 2.0],
        ["t1", "dr_grpo", 3, 13.0, 12.5, 10.0, 16.0, 1.0],
        ["all", "dr_grpo", 3, 0.9, 0.8, 0.7, 1.0, math.nan],
    ],
    columns=stats.LEADERBOARD,
)

# hand-made pairs: one significant after Holm, one not, one untestable (p NaN)
PAIRS = pd.DataFrame(
    [
        ["t1", "dr_grpo", "rloo", 5.0, 2.0, 8.0, 1.0, 0.01, 3.0, 0.005, 3, 2.0],
        ["t1", "dr_grpo", "grpo", 1.0, -1.0, 3.0, 0.6, 0.30, 3.0, 0.15, 3, 9.0],
        ["t1", "grpo", "rloo", 4.0, 4.0, 4.0, 1.0, math.nan, math.nan, math.nan, 1, math.nan],
    ],
    columns=stats.PAIRS,
)


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_colours_extend_the_registered_ones_for_variant_labels():
    maps = ("tab10", "tab20", "tab20b", "tab20c")
    colours = [matplotlib.colors.to_hex(c) for m in maps for c in plt.get_cmap(m).colors]
    colours = list(dict.fromkeys(colours))  # tab10's colours recur in tab20
    names = estimators.REGISTRY.names()
    palette = render.colours(["dr_grpo", "rloo"])
    assert palette["rloo"] == colours[names.index("rloo")] == render.colours()["rloo"]
    assert palette[names[0]] == colours[0]  # tab10 first
    assert palette["dr_grpo"] not in render.colours().values()  # a new, distinct colour
    assert render.colours(["rloo", "dr_grpo"]) == palette  # order of the labels does not matter
    many = render.colours([f"variant_{i}" for i in range(30)])
    assert len(set(many.values())) == len(many)  # tab10 + tab20 + tab20b/c: no repeats


def test_mean_band_is_the_bootstrap_interval_of_the_mean_over_runs():
    curves = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [4.0, 4.0, 4.0]])  # [runs, points]
    mean, low, high = render.mean_band(curves)
    np.testing.assert_allclose(mean, [7 / 3, 10 / 3, 13 / 3])
    # point by point, the same as stats.bootstrap_ci of that point's runs
    for j in range(curves.shape[1]):
        expected = stats.bootstrap_ci([curves[:, j]], stats.mean)
        np.testing.assert_allclose([low[j], high[j]], expected)
    # by hand: with 3 runs a resample is all the lowest run with chance 1/27 = 3.7% > 2.5%,
    # so the 2.5% and 97.5% percentiles are the lowest and highest run at each point
    np.testing.assert_allclose(low, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(high, [4.0, 4.0, 6.0])


def test_band_is_shaded_for_three_runs_and_absent_for_one(ax):
    x = np.arange(3.0)
    render._band(ax, x, np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [4.0, 4.0, 4.0]]), "k", "a")
    assert len(ax.collections) == 1
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == 1.0 and band[:, 1].max() == 6.0

    mean, low, high = render.mean_band(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(mean, [1.0, 2.0, 3.0])
    assert np.isnan(low).all() and np.isnan(high).all()
    ax.clear()
    render._band(ax, x, np.array([[1.0, 2.0, 3.0]]), "k", "a")
    assert len(ax.lines) == 1 and not ax.collections
    assert ax.lines[0].get_label() == "a (n=1)"


def test_interval_panel_draws_the_leaderboard_columns(ax):
    render._interval_panel(ax, BOARD[BOARD.task == "t1"], render.colours(BOARD.estimator))
    intervals, means, iqms = ax.collections  # hlines, mean dots, IQM diamonds
    # best rank first: dr_grpo at y=0, rloo at y=1
    segments = [s.tolist() for s in intervals.get_segments()]
    assert segments == [[[10.0, 0.0], [16.0, 0.0]], [[6.0, 1.0], [9.5, 1.0]]]
    np.testing.assert_allclose(means.get_offsets(), [[13.0, 0.0], [8.0, 1.0]])
    np.testing.assert_allclose(iqms.get_offsets(), [[12.5, 0.0], [7.5, 1.0]])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["dr_grpo (rank 1)", "rloo (rank 2)"]

    ax.clear()
    render._interval_panel(ax, BOARD[BOARD.task == "all"], render.colours(BOARD.estimator))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dr_grpo"]  # no rank for `all`


def test_pairs_panel_draws_differences_and_marks_significance(ax):
    render._pairs_panel(ax, PAIRS)
    filled, hollow = (ax.collections[0], ax.collections[1])  # hlines: significant, then not
    assert [s.tolist() for s in filled.get_segments()] == [[[2.0, 0.0], [8.0, 0.0]]]
    assert [s.tolist() for s in hollow.get_segments()] == [
        [[-1.0, 1.0], [3.0, 1.0]],
        [[4.0, 2.0], [4.0, 2.0]],  # untestable (p NaN) counts as not significant
    ]
    assert filled.get_linewidth()[0] > hollow.get_linewidth()[0]
    dots = {line.get_label(): line for line in ax.lines}
    significant, other = dots["p (Holm) < 0.05"], dots["not significant"]
    assert list(significant.get_xdata()) == [5.0] and list(other.get_xdata()) == [1.0, 4.0]
    assert significant.get_markerfacecolor() == "k" and other.get_markerfacecolor() == "white"
    zero = [line for line in ax.lines if line.get_label().startswith("_")]  # the axvline
    assert list(zero[0].get_xdata()) == [0.0, 0.0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["dr_grpo - rloo", "dr_grpo - grpo", "grpo - rloo"]


# hand-made verdicts of one task, columns best first: x, y, z
VERDICT_ROWS = pd.DataFrame(
    {
        "task": ["t1"] * 3,
        "a": ["x", "x", "y"],
        "b": ["y", "z", "z"],
        "verdict": ["equivalent", "A better", "undecided"],
        "effect": [0.2, 3.456, -1e-15],
        "margin": [1.0] * 3,
    }
)
PALETTE = {
    "A better": "#00ff00",
    "B better": "#ff0000",
    "equivalent": "#0000ff",
    "undecided": "#888888",
}


def test_verdict_panel_colours_each_pair_by_its_verdict(ax):
    render._verdict_panel(ax, VERDICT_ROWS, PALETTE)
    (image,) = ax.images
    codes = image.get_array()
    # row a, column b, upper triangle: palette index of each verdict; the rest masked (NaN)
    assert codes[0, 1] == 2 and codes[0, 2] == 0 and codes[1, 2] == 3
    assert np.isnan(np.asarray(codes, dtype=float)[[0, 1, 2, 1, 2], [0, 0, 0, 1, 1]]).all()
    rgba = image.cmap(image.norm(codes[0, 2]))
    assert matplotlib.colors.to_hex(rgba) == "#00ff00"
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert texts == {((1, 0), "0.20"), ((2, 0), "3.46"), ((2, 1), "0.00")}  # x = column b
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]


def test_figures_of_stats_tables_are_written(tmp_path):
    board = stats.leaderboard(SCORES, n_resamples=RESAMPLES)
    pair_table = stats.pairs(SCORES, n_resamples=RESAMPLES)
    profile = stats.performance_profile(
        stats.normalise(SCORES), np.linspace(0, 1, 11), n_resamples=RESAMPLES
    )
    for path in [
        render.interval_figure(board, tmp_path / "intervals.png"),
        render.interval_figure(BOARD, tmp_path / "hand_intervals.png"),
        render.pairs_figure(pair_table, tmp_path / "pairs.png"),
        render.pairs_figure(PAIRS, tmp_path / "hand_pairs.png"),
        render.profile_figure(profile, tmp_path / "profile.png"),
        render.verdict_figure(VERDICT_ROWS, tmp_path / "verdicts.png", PALETTE),
    ]:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000, path
    assert not plt.get_fignums()  # every figure closed


def test_line_and_variance_figures_take_variant_labels(tmp_path):
    rows = [
        {"estimator": estimator, "run_id": f"{estimator}-{run}", "step": step}
        | {"metric": "train/reward_mean", "value": float(step * (run + 1))}
        for estimator, runs in {"dr_grpo": 3, "rloo": 1}.items()
        for run in range(runs)
        for step in range(1, 6)
    ]
    history = pd.DataFrame(rows)
    path = render.line_figure(
        history, "step", "train/reward_mean", "step", "reward", "Reward", tmp_path / "line.png"
    )
    variance = pd.DataFrame(
        {
            "estimator": ["grpo_seq", "rloo_k3"],
            "total_variance": [0.5, 2.0],
            "cosine_to_reference": [0.9, 0.7],
        }
    )
    bars = render.variance_figure(variance, tmp_path / "variance.png")
    for written in (path, bars):
        assert written.stat().st_size > 1000, written
    assert not plt.get_fignums()


def test_valid_curves_against_tokens_start_at_the_step_0_evaluation():
    # eval at steps 0 and 2; train/tokens is logged from step 1 on (10 and 20 tokens)
    rows = [
        ("eval/chrf", 0, 40.0),
        ("train/tokens", 1, 10.0),
        ("eval/chrf", 2, 44.0),
        ("train/tokens", 2, 20.0),
    ]
    history = pd.DataFrame(
        [
            {"estimator": "rloo", "run_id": "a", "metric": metric, "step": step, "value": value}
            for metric, step, value in rows
        ]
    )
    (curve,) = render._curves(history, "train/tokens", "eval/chrf", np.array([0.0, 10.0, 20.0]), 1)[
        "rloo"
    ]
    # 0 tokens before step 1 -> 40 at 0 tokens; linear to 44 at 20 tokens
    assert curve.tolist() == [40.0, 42.0, 44.0]
