"""pruner installed as a plain (non-editable) package: package data travels with it and the main job runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_non_editable_install_runs_a_search_from_another_folder(tmp_path: Path) -> None:
    site, source = tmp_path / "site", tmp_path / "source"
    shutil.copytree(ROOT / "pruner", source / "pruner", ignore=shutil.ignore_patterns("__pycache__", ".teacher*"))
    for name in ("pyproject.toml", "README.md"):  # built from a copy: setuptools leaves build/ beside its source
        shutil.copy2(ROOT / name, source / name)
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(site), str(source)]  # fmt: skip
    subprocess.run(install, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    assert (site / "pruner" / "study" / "spaces" / "default.yaml").is_file()
    assert (site / "pruner" / "tiny" / "teacher" / "model_index.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "PRUNER_THREADS": "1"}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import pruner; print(pruner.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site))
    search = [sys.executable, "-m", "pruner", "search", "--budget", "50%", "--trials", "2", "--proxy-steps", "2",
              "--calibration", "8", "--held-out", "8"]  # fmt: skip
    done = subprocess.run(search, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "recipes" / "found.yaml").is_file()
