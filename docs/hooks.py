"""mkdocs hook: the README is the site's home page, read in place of docs/index.md, with its links into
docs/ made relative to the site's root (one front door, written once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The home page's markdown is the README's, ``](docs/x)`` rewritten to ``](x)``."""
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return readme.read_text(encoding="utf-8").replace("](docs/", "](")
