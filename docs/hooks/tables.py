"""MkDocs hook: read `\\|` inside a table's code spans as GitHub does, as a literal `|`.

GitHub's tables need a pipe escaped even inside a code span (`group\\|batch`), and show it
without the backslash; Python-Markdown keeps the backslash there. The pages keep GitHub's form,
so they read right in both; this hook drops those backslashes before MkDocs renders a page.
"""

from __future__ import annotations

import re

CODE = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs' event signature
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|"):
            lines[i] = CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)
