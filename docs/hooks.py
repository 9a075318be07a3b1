"""mkdocs hooks: the README is the site's home page, read in place of docs/index.md, with its links into
docs/ made relative to the site's root (one front door, written once); and the Sphinx roles of pruner's
docstrings (``:func:`search```, which ``help()`` readers know) shown as plain code in the API reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>~?")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The home page's markdown is the README's, ``](docs/x)`` rewritten to ``](x)``."""
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return readme.read_text(encoding="utf-8").replace("](docs/", "](")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """``:func:<code>search</code>`` (a docstring's role, rendered) becomes ``<code>search</code>``."""
    return _ROLE.sub("<code>", html)
