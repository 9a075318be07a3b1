"""The whole user path at tiny size (``benchmarks/sdxl_scale.py --tiny``: synth-data, cache, search, distill
and eval, each in its own process, as a user runs them).

A module of its own so that pytest-xdist, which keeps a module's tests on one worker, can run it beside
the other benchmark scripts' tests: at about 100 s it is the suite's longest test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_benchmarks import run


@pytest.mark.slow
def test_sdxl_scale_runs_the_user_path_at_tiny_size(tmp_path: Path) -> None:
    out = run("benchmarks/sdxl_scale.py", "--tiny", "--work", str(tmp_path))
    stages = ("build pipeline", "synth-data", "cache", "search", "distill", "eval")
    assert all(stage in out for stage in stages) and "peak host GiB" in out and "s / trial" in out
    assert "calibration: 8 training rows" in out and "trials: " in out and "median" in out
    assert "UNet latency at 8x8 latents" in out and "; vega " in out
    assert (tmp_path / "recipes" / "found.yaml").is_file() and (tmp_path / "student" / "unet").is_dir()
    assert (tmp_path / "eval.png").is_file()
