"""Command line: `pgbench <verb> key=value ...`; `pgbench <verb> --help` lists every key.

Nothing imported here imports torch: `pgbench --help`, an unknown task or estimator name, an
unknown key outside `task.*`/`estimator.*` and a bad value of a top-level knob or of a section
are answered in a fraction of a second (config.verbs.check runs before the verb's function,
which imports what it needs). `pgbench <verb> --help` imports the selected task and estimator,
to list their knobs.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from pgbench import __version__
from pgbench.config import verbs
from pgbench.config.urls import redact
from pgbench.config.verbs import VERB_ARGS, check, help_rows, parse_overrides
from pgbench.errors import PgbenchError
from pgbench.runs import commands

VERBS: dict[str, Callable[[dict[str, str]], int]] = {  # what each verb runs
    "run": commands.run,
    "sweep": commands.sweep,
    "compare": commands.compare,
    "suite": commands.suite,
    "report": commands.report,
    "variance": commands.variance,
    "eval": commands.evaluate_policy,
    "build-tiny": commands.build_tiny,
    "sync": commands.sync_run,
}
# the verbs whose function resolves its keys as given (suite reads short forms: suite=NAME)
CHECKED = set(VERB_ARGS) - {"suite"}
SUMMARIES = {name: verb.summary for name, verb in verbs.VERBS.items()} | {
    "sync": "upload a run's metrics buffered during an MLflow outage"
}


def usage() -> str:
    width = max(len(name) for name in VERBS) + 2
    lines = "\n".join(f"  {name:<{width}}{SUMMARIES[name]}" for name in VERBS)
    return (
        f"pgbench {__version__}: compare policy-gradient estimators for language models\n\n"
        f"usage: pgbench <verb> [key=value ...]\n\nverbs:\n{lines}\n\n"
        "`pgbench <verb> --help` lists every key with its type and default."
    )


def verb_help(name: str, overrides: dict[str, str]) -> str:
    """Help of one verb: every key it accepts, for the selected task and estimator."""
    if name not in VERB_ARGS:
        return f"usage: pgbench {name} <run dir> [tracking.uri=URL]\n\n{SUMMARIES[name]}."
    task, estimator = overrides.get("task", "fr_en"), overrides.get("estimator", "rloo")
    rows = help_rows(VERB_ARGS[name], task, estimator, overrides.get("model", ""))
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"usage: pgbench {name} [key=value ...]\n\n{SUMMARIES[name]}.\n\nkeys (type, default):"
    ]
    for key, type_name, default, text in rows:
        lines.append(f"  {key:<{width}}{text}  [{type_name}, default {default}]")
    if name == "suite":
        lines.append(
            "\nShort forms: suite=NAME is suite.protocol=NAME, tasks=... is suite.tasks=..."
            "\nA protocol file may add [variant.NAME] columns: an estimator with its own keys."
            "\ntask.* keys (listed for task fr_en) apply to the runs of every task."
        )
    lines.append(
        "\nTask and estimator keys depend on the selection: "
        "`pgbench run estimator=reinforce --help` shows estimator.baseline."
        "\ntask= and estimator= also take your own class, pkg.module:Class, or the name an "
        "installed plug-in declares (docs/plugins.md)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pgbench` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name == "sync" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"run_dir={rest[0]}", *rest[1:]]  # `pgbench sync <run dir>`
    # a new local MLflow store announces its tables at INFO level: not news to a user
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # MLflow retries an unreachable server for minutes by default; a run buffers instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if name not in VERBS:
        print(f"pgbench: unknown verb {name!r}; valid: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    try:
        wants_help = any(a in ("-h", "--help") for a in rest)
        overrides = parse_overrides([a for a in rest if a not in ("-h", "--help")])
        if wants_help:
            print(verb_help(name, overrides))
            return 0
        if name in CHECKED:
            check(overrides, VERB_ARGS[name])  # a typo fails before the verb imports torch
        return VERBS[name](overrides)
    except PgbenchError as err:
        print(f"pgbench {name}: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgbench {name}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a library's message may quote a URL: its traceback without passwords
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
