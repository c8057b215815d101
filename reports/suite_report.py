"""The report of `pgbench suite`: tables, findings and figures from its finished runs.

Per run it reads from MLflow the valid-metric curve (its area, `tables.area_under_curve`, is
the run's learning speed) and, where the task logs it, `test/wrong_chars`. Writes, in `out`:
leaderboard.csv and pairs.csv (final held-out metric), leaderboard_auc.csv and pairs_auc.csv
(area under the valid curve), findings.csv, suite.md, suite.html and the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from pgbench import tasks
from pgbench.reports import (
    collect,
    findings,
    probes,
    render,
    scaling,
    sequential,
    stats,
    tables,
    transfer,
    tuned,
    verdicts,
)

TAUS = np.linspace(0.0, 1.0, 21)  # normalised-score thresholds of the performance profile
FINAL = "Leaderboard (final held-out metric)"
# the HTML pages of the verdicts (verdicts.write's tables): page title, table
VERDICT_PAGES = {"decision rate per task": "rates", "gain over the start": "gains", "": "verdicts"}
SPEED = "Leaderboard (area under the valid curve per step: learning speed)"


def per_run_frame(client: MlflowClient, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, quantities) of `runs` (columns of suite.RUNS).

    curves: tidy histories of eval/<metric> and train/tokens (collect.history_frame, plus
    task); quantities: task, estimator, seed, quantity (metric, auc, wrong_chars, and entropy,
    the mean train/entropy over the steps, for the columns an entropy claim names), value.
    """
    curves, rows = [], []
    claims = [claim for claim in findings.CLAIMS if claim.quantity == "entropy"]
    named = {column for claim in claims for column in (claim.a, claim.b)}
    for task, group in runs.groupby("task"):
        valid = f"eval/{tasks.REGISTRY.get_class(task).metric}"
        history = collect.history_frame(client, group, [valid, "train/tokens"]).assign(task=task)
        curves.append(history)
        auc = tables.area_under_curve(history, valid)
        entropy = (
            collect.history_frame(client, group[group.estimator.isin(named)], ["train/entropy"])
            .groupby("run_id")
            .value.mean()
        )
        for run in group.itertuples():
            key = {"task": task, "estimator": run.estimator, "seed": run.seed}
            rows.append(key | {"quantity": "metric", "value": run.value})
            if run.run_id in auc.index:
                rows.append(key | {"quantity": "auc", "value": float(auc[run.run_id])})
            if run.run_id in entropy.index:
                rows.append(key | {"quantity": "entropy", "value": float(entropy[run.run_id])})
            wrong = client.get_run(run.run_id).data.metrics.get("test/wrong_chars")
            if wrong is not None:
                rows.append(key | {"quantity": "wrong_chars", "value": wrong})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)


def _scores(quantities: pd.DataFrame, quantity: str) -> pd.DataFrame:
    chosen = quantities[quantities.quantity == quantity]
    return chosen[["task", "estimator", "seed", "value"]].reset_index(drop=True)


def _figures(
    out: Path,
    board: pd.DataFrame,
    pair_table: pd.DataFrame,
    scores: pd.DataFrame,
    start: dict[str, float],
    curves: pd.DataFrame,
) -> list[Path]:
    profile = stats.performance_profile(stats.normalise(scores, start), TAUS)
    figures = [render.interval_figure(board, out / "leaderboard.png")]
    if len(pair_table):  # one estimator: no pairs
        figures.append(render.pairs_figure(pair_table, out / "pairs.png"))
    if len(profile):  # no task whose best run beat its start: nothing to normalise
        figures.append(render.profile_figure(profile, out / "performance_profile.png"))
    for task, history in curves.groupby("task"):
        metric = tasks.REGISTRY.get_class(task).metric
        figures.append(
            render.line_figure(
                history,
                "train/tokens",
                f"eval/{metric}",
                "completion tokens generated",
                f"valid {metric}",
                f"{task}: valid {metric} vs tokens",
                out / f"{task}_valid_{metric}.png",
                smooth=1,
            )
        )
    return figures


def _tuned_sections(
    out: Path,
    board: pd.DataFrame,
    pair_table: pd.DataFrame,
    start: dict[str, float],
    tuning: dict[str, Any],
) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """(the leaderboard with each column's robustness, Markdown sections, figures) of a tuned
    suite; writes its tables (reports/tuned.py) and the shared-defaults leaderboard."""
    shared = tuning["defaults"][["task", "estimator", "seed", "value"]]
    default_pairs = stats.pairs(shared)
    written = tuned.write_tables(out, tuning, pair_table, default_pairs)
    robust = tuned.robustness(tuning["tuning"], pair_table)
    board = board.merge(robust, on=["task", "estimator"], how="left")
    sections = [
        "## Tuning",
        f"Every column of a tuned task ran the same points on the same tuning seeds; each was "
        f"tested at the point with the best mean `{tuning['objective']}` (valid split, tuning "
        "seeds only). Selected points:",
        render.frame_markdown(written["selected"]),
        "Budget spent per column (tuning runs):",
        render.frame_markdown(written["tuning_budget"]),
        tuned.__doc__.split("\n\n")[2].strip(),
        render.frame_markdown(robust),
    ]
    figures = [
        tuned.sensitivity_figure(written["sensitivity"], task, out / f"sensitivity_{task}.png")
        for task in written["sensitivity"].task.unique()
    ]
    if len(shared):
        default_board = stats.leaderboard(shared, start=start, pair_table=default_pairs)
        default_board.to_csv(out / "leaderboard_defaults.csv", index=False)
        default_pairs.to_csv(out / "pairs_defaults.csv", index=False)
        changes = written["verdict_changes"]
        sections += [
            "## Leaderboard at the shared defaults (the same test seeds, untuned)",
            render.leaderboard_markdown(default_board),
            "Pairs whose verdict changes with tuning (Holm-corrected paired tests, alpha 0.05):",
            render.frame_markdown(changes) if len(changes) else "None.",
        ]
    return board, sections, figures


def _transfer_sections(
    out: Path, runs: pd.DataFrame, pairs: pd.DataFrame, proxy: Path | None
) -> tuple[list[str], list[dict]]:
    """The transfer section and findings rows against the `proxy` suite; transfer.csv."""
    if proxy is None:
        return [], []
    proxy_runs, proxy_pairs = transfer.read_proxy(proxy)
    agreement = transfer.pair_agreement(pairs, proxy_pairs)
    agreement.to_csv(out / "transfer.csv", index=False)
    agree = int(agreement.agree.sum())
    section = [
        f"## Transfer from the proxy suite ({proxy})",
        transfer.__doc__.split("\n\n", 1)[1].strip(),
        f"Pair verdicts that agree: {agree} of {len(agreement)} (`transfer.csv`).",
        render.frame_markdown(agreement) if len(agreement) else "No pair ran on both.",
    ]
    return section, transfer.tau_rows(runs, proxy_runs, str(proxy))


def _scaling(out: Path, runs: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Each column's fitted scaling curve (scaling.csv) and one figure per task."""
    metrics = {t: f"eval/{tasks.REGISTRY.get_class(t).metric}" for t in runs.task.unique()}
    fits = scaling.scaling_table(curves, metrics)
    fits.to_csv(out / "scaling.csv", index=False)
    figures = [
        scaling.scaling_figure(
            history, fits[fits.task == task], metrics[task], out / f"scaling_{task}.png"
        )
        for task, history in curves.groupby("task")
    ]
    return fits, figures


def failed_section(failed: dict[str, str]) -> list[str]:
    """The "Failed cells" section: each cell given up after its attempts, with its last error."""
    if not failed:
        return []
    one_line = {name: " ".join(error.split()).replace("|", "/") for name, error in failed.items()}
    rows = "\n".join(f"| {name} | {error} |" for name, error in one_line.items())
    return ["## Failed cells", f"| cell | last error |\n| --- | --- |\n{rows}"]


def write_report(
    out: Path,
    title: str,
    runs: pd.DataFrame,
    start: dict[str, float],
    variance: dict[str, dict[str, float]],
    uri: str,
    tuning: dict[str, Any] | None = None,
    proxy: Path | None = None,
    failed: dict[str, str] | None = None,
    margins: dict[str, float] | None = None,
    design: sequential.Design | None = None,
    known: tuple[list[probes.Probe], dict[str, tuple[str, str]]] = ([], {}),
) -> dict[str, Any]:
    """Write the tables, findings, Markdown, HTML and figures of these runs into `out`.

    A tuned suite passes `tuning`: its tuning runs, selection, objective and the runs at the
    shared defaults (pgbench.runs.suite.conclude); `_tuned_sections` adds their tables and figures.
    `proxy`: the same protocol's output folder on a cheaper policy (reports/transfer.py);
    `failed`: the cells given up after their last attempt, with their last error;
    `margins`: each task's equivalence margin (verdicts.margins; None: the defaults);
    `design`: an adaptive suite's looks (reports/sequential.py), judged as it decided;
    `known`: the protocol's probes and its reward-transform columns (reports/probes.py)."""
    curves, quantities = per_run_frame(MlflowClient(uri), runs)
    scores = _scores(quantities, "metric")
    pair_table = stats.pairs(scores)
    board = stats.leaderboard(scores, start=start, pair_table=pair_table)
    if margins is None:
        margins = verdicts.margins(list(scores.task.unique()))
    judged, adaptive = _verdicts(out, scores, start, margins, design)
    known_sections, known_figures = probes.write(out, known[0], scores, margins, known[1])
    auc_board, auc_pairs = _speed(quantities)
    transfer_section, transfer_rows = _transfer_sections(out, runs, pair_table, proxy)
    found = findings.findings(quantities, variance, extra=transfer_rows)
    fits, fit_figures = _scaling(out, runs, curves)
    board = board.merge(
        fits[["task", "estimator", *scaling.PARAMS]], on=["task", "estimator"], how="left"
    )
    extra, extra_figures = [], []
    if tuning is not None:
        board, extra, extra_figures = _tuned_sections(out, board, pair_table, start, tuning)
    tables = {"leaderboard": board, "leaderboard_auc": auc_board, "pairs_auc": auc_pairs}
    for name, table in (tables | {"pairs": pair_table, "findings": found}).items():
        table.to_csv(out / f"{name}.csv", index=False)
    figures = _figures(out, board, pair_table, scores, start, curves) + extra_figures + fit_figures
    figures += judged["figures"] + known_figures
    sections = [
        title,
        f"## {FINAL}",
        render.leaderboard_markdown(board),
        *extra,
        *transfer_section,
        f"## {SPEED}",
        render.leaderboard_markdown(auc_board),
        *_analyses(fits, pair_table, judged["sections"] + adaptive + known_sections, found),
        "\n".join(f"![{p.stem}]({p.name})" for p in figures),
        *failed_section(failed or {}),
    ]
    (out / "suite.md").write_text("\n\n".join(sections) + "\n")
    pages = {FINAL: board, SPEED: auc_board, "Paired comparison": pair_table}
    pages |= {f"Verdicts: {name}".rstrip(": "): judged[k] for name, k in VERDICT_PAGES.items()}
    (out / "suite.html").write_text(render.html_page(title, pages | {"Findings": found}, figures))
    tables = {
        "pairs": pair_table,
        "verdicts": judged["verdicts"],
        "decision_rates": judged["rates"],
    }
    return tables | {"leaderboard": board, "findings": found, "figures": figures}


def _verdicts(
    out: Path,
    scores: pd.DataFrame,
    start: dict[str, float],
    margins: dict[str, float],
    design: sequential.Design | None,
) -> tuple[dict[str, Any], list[str]]:
    """verdicts.csv and verdicts.png (verdicts.write), judged in one look or, for an adaptive
    suite, look by look (sequential.py; seeds.csv and its section too)."""
    if design is None:
        return verdicts.write(out, scores, start, margins), []
    table = sequential.verdict_table(scores, margins, design)
    judged = verdicts.write(out, scores, start, margins, table=table, rule=sequential.rule(design))
    return judged, sequential.write(out, scores, table, design)


def _speed(quantities: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The leaderboard and the pairs of the area under each run's valid curve."""
    auc = _scores(quantities, "auc")
    auc_pairs = stats.pairs(auc)
    return stats.leaderboard(auc, pair_table=auc_pairs), auc_pairs


def _analyses(
    fits: pd.DataFrame, pair_table: pd.DataFrame, verdict_sections: list[str], found: pd.DataFrame
) -> list[str]:
    """The Markdown of the scaling fits, the paired comparison, the verdicts and the findings."""
    return [
        "## Scaling curves (valid metric against generated tokens)",
        scaling.__doc__.split("\n\n", 1)[1].strip(),
        scaling.markdown(fits),
        "## Paired comparison",
        render.pairs_markdown(pair_table),
        *verdict_sections,
        "## Findings",
        findings.__doc__.split("\n\n", 1)[1].strip(),
        findings.markdown(found),
    ]
