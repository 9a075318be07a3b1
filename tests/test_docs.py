"""The documentation's Python: every ``python`` block of the README and of docs/ type-checks with the
project's mypy settings (the README's Python API block also runs, in tests/test_api.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: str) -> list[str]:
    """The fenced ``python`` blocks of a markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def documented_python() -> dict[str, str]:
    """Each python block of README.md and docs/**/*.md, keyed by a file name that says where it came from."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks: dict[str, str] = {}
    for page in pages:
        stem = re.sub(r"\W", "_", str(page.relative_to(ROOT).with_suffix("")))
        for k, block in enumerate(python_blocks(page.read_text(encoding="utf-8"))):
            blocks[f"{stem}_{k}.py"] = block
    return blocks


@pytest.mark.slow  # about 1 s with mypy's cache warm (CI runs mypy first), 30 s cold
def test_the_readme_and_docs_python_blocks_pass_mypy(tmp_path: Path) -> None:
    blocks = documented_python()
    assert "README_0.py" in blocks and "import pruner" in blocks["README_0.py"], "the README's API block is checked"
    # a block with a wrong argument type, checked in the same run, shows that the check can fail
    blocks["wrong_type.py"] = 'import pruner\n\npruner.search("tiny-sdxl", trials="many")\n'
    for name, block in blocks.items():
        (tmp_path / name).write_text(block)
    # run from the repository so that pyproject's [tool.mypy] settings and mypy's cache apply
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", *sorted(str(tmp_path / name) for name in blocks)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    # by file name: mypy's cache may report an unchanged file under the folder it first saw it in
    assert errors and all(Path(line.split(":")[0]).name == "wrong_type.py" for line in errors), checked.stdout
    assert "arg-type" in errors[0] and "Found 1 error in 1 file" in checked.stdout, checked.stdout


def test_the_readme_test_command_and_torch_pin_are_what_ci_runs() -> None:
    """The README's two commands stay true to .ci/run: the same test command, the same torch pin."""
    readme, ci = (ROOT / "README.md").read_text(encoding="utf-8"), (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    bash = re.findall(r"```bash\n(.*?)```", readme.split("## Quick start", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(bash) == 2, "the quick start has two commands: set up and run the main job, and run the tests"
    setup, tests = (block.strip() for block in bash)
    test_command = tests.split("&&")[-1].strip()
    assert test_command in [line.strip() for line in ci.splitlines()], f"{test_command!r} is not a line of .ci/run"
    pins = set(re.findall(r"torch==[\w.]+", ci))
    assert pins and pins == set(re.findall(r"torch==[\w.]+", setup)), (pins, setup)
    assert 'pip install -e ".[dev]"' in setup and 'pip install -q -e ".[dev]"' in ci
