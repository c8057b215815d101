"""MkDocs hook: publish the example reports of reports/examples/ under examples/ in the site.

The suites' reports (suite.md, suite.html, their figures and CSVs) are written by pgbench into
reports/examples/; rather than keep copies in docs/, this hook adds those files to the site as
they are, so docs/results.md can link `examples/suite-cpu/suite.md` and embed its figures.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

# The folder published, relative to the repository root (mkdocs.yml's folder):
EXAMPLES = Path("reports/examples")
PUBLISHED = {".md", ".png", ".html", ".csv", ".json"}


def on_files(files: Files, config) -> Files:
    """Add every published file under EXAMPLES to the site as `examples/<its path>`."""
    source = Path(config.config_file_path).parent / EXAMPLES
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.suffix in PUBLISHED:
            uri = f"examples/{path.relative_to(source).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
