"""MkDocs hook: the key reference of docs/configuration.md, generated from the verbs' classes.

The line `<!-- keys -->` in a page is replaced by one table per verb, made by the package's own
`help_rows` (what `pgbench <verb> --help` prints), then the keys each task and each estimator
adds. Registered in mkdocs.yml (`hooks:`); needs pgbench installed (`pip install -e ".[dev]"`).
"""

from __future__ import annotations

import html
import re

# The lines to update when the configuration modules move:
from pgbench.config.compose import COMPONENTS, Resolved, prefixes
from pgbench.config.verbs import VERB_ARGS, help_rows

MARKER = "<!-- keys -->"
CODE = re.compile(r"(`[^`]*`)")  # inline code spans, kept as they are
SYNTAX = re.compile(r"([\\*_\[\]|])")  # characters Markdown would read as syntax

Row = tuple[str, str, str, str]  # (key, type, default, help), as help_rows returns them


def text(value: str) -> str:
    """A table cell showing `value` as written: code spans kept, the rest escaped."""
    return "".join(
        part if part.startswith("`") else SYNTAX.sub(r"\\\1", html.escape(part, quote=False))
        for part in CODE.split(value)
    )


def code(value: str) -> str:
    """A table cell showing `value` as code, whatever it holds (pipes included)."""
    return f"<code>{html.escape(value, quote=False).replace('|', '&#124;')}</code>"


def table(rows: list[Row]) -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| {code(k)} | {code(t)} | {code(d)} | {text(h)} |" for k, t, d, h in rows]
    return "\n".join(lines)


def components(verb: type[Resolved]) -> list[str]:
    """The verb's components (`task`, `estimator`), whose `name.*` keys vary."""
    return [prefix for prefix in prefixes(verb) if prefix in COMPONENTS]


def names(component: str) -> list[str]:
    """The registered names of the `task` or `estimator` component."""
    return COMPONENTS[component][0].names()


def own(rows: list[Row], component: str) -> list[Row]:
    return [row for row in rows if row[0].startswith(f"{component}.")]


def key_reference() -> str:
    out: list[str] = []
    for verb, args in VERB_ARGS.items():
        varying = components(args)
        rows = [r for r in help_rows(args) if r[0].split(".")[0] not in varying or "." not in r[0]]
        summary = args.spec.summary
        out += [f"### pgbench {verb}", "", text(summary[0].upper() + summary[1:] + "."), ""]
        if varying:
            more = " and ".join(f"[`{c}.*`](#{c}-keys)" for c in varying)
            out += [f"Plus the {more} keys of the selected one, below.", ""]
        out += [table(rows), ""]
    run = VERB_ARGS["run"]
    tasks = names("task")
    per_task = {task: help_rows(run, task=task) for task in tasks}
    out += ["### Task keys", ""]
    for task in tasks:
        out += [f"#### task={task}", "", table(own(per_task[task], "task")), ""]
    defaults = {task: {row[0]: row[2] for row in rows} for task, rows in per_task.items()}
    varies = [key for key in defaults[tasks[0]] if len({d.get(key) for d in defaults.values()}) > 1]
    out += ["#### Defaults that depend on the task", ""]
    out += ["| key | " + " | ".join(f"task={task}" for task in tasks) + " |"]
    out += ["| --- |" + " --- |" * len(tasks)]
    for key in varies:
        cells = " | ".join(
            code(defaults[task].get(key, "").removesuffix(f" ({task})")) for task in tasks
        )
        out += [f"| {code(key)} | {cells} |"]
    out += [""]
    out += ["### Estimator keys", ""]
    for estimator in names("estimator"):
        rows = own(help_rows(run, estimator=estimator), "estimator")
        out += [f"#### estimator={estimator}", ""]
        out += [table(rows) if rows else "No keys of its own.", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs' event signature
    """Replace the marker, on whichever page holds it, with the generated reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, key_reference())
