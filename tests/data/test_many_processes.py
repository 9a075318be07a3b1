"""A cache written by two CPU processes (gloo) is the one-process cache: the same rows in the same order, the
same tensors, the same skips; and a run killed mid-way in each process resumes to it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pruner
from pruner.data import LatentCache, build_cache
from pruner.data.world import row_range
from pruner.teacher import Teacher
from pruner.tiny.synth import write_dataset

ROOT = Path(__file__).resolve().parents[2]
N, BROKEN = 12, (1, 8)  # one unreadable picture in each half (each process's part)
PARTS = ["part-00000-of-00002", "part-00001-of-00002"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pictures") / "images"
    write_dataset(root, N, seed=5, progress=False)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    for row in BROKEN:
        (root / rows[row]["file_name"]).write_bytes(b"not a picture")
    return root


@pytest.fixture(scope="module")
def reference(pictures: Path, tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "cache"
    summary = pruner.cache(pictures, out, teacher=tiny_sdxl_pipeline, device="cpu")
    assert (summary.n_written, summary.skipped_reasons) == (N - 2, {"unreadable": 2})
    return out


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _same(a: Path, b: Path) -> None:
    left, right = LatentCache(a), LatentCache(b)
    assert len(left) == len(right) == N - 2
    for i in range(len(left)):
        assert (left.source_row(i), left.caption(i)) == (right.source_row(i), right.caption(i))
        x, y = left[i], right[i]
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], atol=1e-5, rtol=1e-4)
    assert left.meta["skipped"] == right.meta["skipped"] == {"unreadable": 2}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_two_processes_under_accelerate_write_the_one_process_cache(
    pictures: Path, reference: Path, tiny_sdxl_pipeline: str, tmp_path: Path
) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    out = tmp_path / "two"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", _free_port(), "-m", "pruner", "cache",
           str(pictures), "--teacher", tiny_sdxl_pipeline, "--out", str(out), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in out.glob("part-*")) == PARTS
    _same(reference, out)
    said = " ".join(done.stderr.split())  # the console wraps long lines
    # the index, said by the process that wrote it; the other says its share only when it finished first
    # while the other part was still unfinished (two parts finishing together both see the whole cache)
    assert f"cached {N - 2} rows in" in said


def test_a_run_killed_in_each_process_resumes_to_the_same_cache(
    pictures: Path, reference: Path, tiny_sdxl_pipeline: str, tmp_path: Path
) -> None:
    out, port = tmp_path / "killed", _free_port()
    script = ROOT / "tests" / "data" / "killed_cache.py"
    cmd = [sys.executable, str(script), str(pictures), tiny_sdxl_pipeline, str(out), "2"]
    launch = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    ranks = [
        subprocess.Popen(
            cmd, env={**_env(), **launch, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stderr=subprocess.PIPE, text=True
        )
        for rank in range(2)
    ]
    for rank in ranks:
        _, err = rank.communicate(timeout=600)
        assert rank.returncode == -9, err[-3000:]  # killed while writing its second shard
    for part in PARTS:
        meta = json.loads((out / part / "cache.json").read_text())
        assert len(meta["shards"]) == 1 and not meta["complete"]  # the second shard's bytes never got their name
        assert any(path.name.endswith(".tmp") for path in (out / part).iterdir())
    assert not (out / "cache.json").exists() and row_range(N, 1, 2) == (6, 12)
    # resumed by one process here: a cache keeps its two parts whatever the number of processes that resume it
    again = build_cache(pictures, Teacher.resolve(tiny_sdxl_pipeline), out, batch_size=1, shard_size=2, progress=False)
    assert again.resumed and (again.n_written, again.n_encoded, again.waiting) == (N - 2, N - 2 - 4, 0)
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    _same(reference, out)
