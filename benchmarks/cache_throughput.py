"""How fast `pruner cache` reads each source, on one process and on two, and whether reading is ever the
bottleneck: rows per second and the share of the encoding loop's wall time spent in the VAE and text
encoders (tokenisation included), for an image folder, a `datasets` save_to_disk folder, a parquet file
and webdataset tar shards (img2dataset's layout) holding the same synthetic pictures and captions.

Each run is a fresh `pruner.cache(...)` call: one process, or two under `accelerate launch --multi_gpu`
(each process then encodes its row range on one torch thread). Rows per second are the rows encoded over
the encoding loop's wall time (the slowest process's, with two), the model load and imports left out; the
end-to-end seconds of the whole command are beside them, and what the processes got of the machine: the
cores their encoding loops kept busy (CPU seconds over the loop's wall seconds) and the rows encoded per
CPU-second. On a machine shared with other work two processes cannot be twice as fast when they do not get
two cores (Linux shares the CPUs between sessions first); equal rows per CPU-second say they would be.
Goal (issue #28): the encoders' share >= 90% for every source, and two processes >= 1.8x one.

    python benchmarks/cache_throughput.py                          # the bundled teacher's size (32 px), CPU
    python benchmarks/cache_throughput.py --rows 8 --processes 1 --sources folder     # the smallest run
    python benchmarks/cache_throughput.py --sdxl --device cuda     # SDXL size (1024 px), random-weight SDXL
                                                                   # VAE and text encoders, one process a GPU
    ... --markdown table.md                                        # also write the table as markdown
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("folder", "saved", "parquet", "tars")
TINY_SIZE, SDXL_SIZE = 32, 1024
GOAL_SHARE, GOAL_SPEEDUP = 0.90, 1.8


# --------------------------------------------------------------------------- the sources


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def write_pictures(folder: Path, n: int, size: int) -> None:
    """``n`` captioned shape pictures at ``size`` (pruner's synthetic set). At SDXL size they are saved as
    noisy JPEGs instead, as photographs are (flat shapes decode unrealistically fast)."""
    from pruner.tiny.synth import write_dataset

    write_dataset(folder, n, seed=0, size=size, progress=False)
    if size < 256:
        return
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    records = _rows(folder)
    for record in records:
        path = folder / record["file_name"]
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-24, 25, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path.with_suffix(".jpg"), quality=90)
        path.unlink()
        record["file_name"] = path.with_suffix(".jpg").name
    (folder / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def _dataset(folder: Path) -> Any:
    import datasets

    rows = _rows(folder)
    images = [{"bytes": (folder / row["file_name"]).read_bytes(), "path": None} for row in rows]
    table = datasets.Dataset.from_dict({"image": images, "text": [row["text"] for row in rows]})
    return table.cast_column("image", datasets.Image())


def _tars(folder: Path, out: Path, per_shard: int) -> str:
    """img2dataset's layout: KEY.jpg/png beside KEY.txt, ``per_shard`` samples a tar."""
    out.mkdir()
    rows = _rows(folder)
    chunks = [rows[i : i + per_shard] for i in range(0, len(rows), per_shard)]
    for number, chunk in enumerate(chunks):
        with tarfile.open(out / f"{number:05d}.tar", "w") as tar:
            for k, row in enumerate(chunk):
                key = f"{number:05d}{k:04d}"
                for name, payload in ((key + Path(row["file_name"]).suffix, (folder / row["file_name"]).read_bytes()),
                                      (f"{key}.txt", row["text"].encode())):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(out / f"{{00000..{len(chunks) - 1:05d}}}.tar")


def build_sources(work: Path, n: int, size: int, names: list[str]) -> dict[str, str]:
    """The same pictures and captions as each source asked for: what `pruner cache` is given for it."""
    folder = work / "folder"
    write_pictures(folder, n, size)
    made = {"folder": str(folder)}
    if "saved" in names:
        _dataset(folder).save_to_disk(str(work / "saved"))
        made["saved"] = str(work / "saved")
    if "parquet" in names:
        _dataset(folder).to_parquet(str(work / "rows.parquet"))
        made["parquet"] = str(work / "rows.parquet")
    if "tars" in names:
        made["tars"] = _tars(folder, work / "tars", per_shard=max(1, n // 8))
    return {name: made[name] for name in names}


def build_sdxl_teacher(folder: Path) -> str:
    """A pipeline folder with SDXL's VAE and both CLIP text encoders at full size, random weights, and a
    narrow UNet (caching never runs it): benchmarks/sdxl_scale.py's builder."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sdxl_scale import build_pipeline

    return str(build_pipeline(folder, tiny=False, width=0.5))


# --------------------------------------------------------------------------- one run


def worker(args: argparse.Namespace) -> None:
    """One process of a run: cache the source through the API, as `pruner cache` does, and write what it did."""
    import pruner
    from pruner.runtime import configure_threads

    threads = configure_threads()
    summary = pruner.cache(args.data, args.out, teacher=args.teacher, resolution=args.resolution,
                           batch_size=args.batch_size, device=args.device)  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "threads": threads, "encoded": summary.n_encoded, "seconds": summary.seconds,
              "encoder_seconds": summary.encoder_seconds, "cpu_seconds": summary.cpu_seconds}  # fmt: skip
    (Path(args.report) / f"rank-{rank}.json").write_text(json.dumps(record))


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def run_once(data: str, processes: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Cache ``data`` afresh with ``processes`` processes; the figures of the run."""
    out, report = work / "cache", work / "report"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    own = [__file__, "--worker", "--data", data, "--out", str(out), "--report", str(report), "--teacher",
           args.teacher, "--batch-size", str(args.batch_size), "--device", args.device,
           *(["--resolution", str(args.resolution)] if args.resolution else [])]  # fmt: skip
    launcher = [sys.executable]
    if processes > 1:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", _free_port()]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # keep carried packages
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([*launcher, *own], capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} ... failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    ranks = [json.loads(path.read_text()) for path in sorted(report.glob("rank-*.json"))]
    rows = sum(rank["encoded"] for rank in ranks)
    loop = max(rank["seconds"] for rank in ranks)
    share = sum(rank["encoder_seconds"] for rank in ranks) / sum(rank["seconds"] for rank in ranks)
    cpu = sum(rank["cpu_seconds"] for rank in ranks)
    return {"rows": rows, "rows_per_s": rows / loop, "encoders": share, "wall": wall, "cores": cpu / loop,
            "per_core": rows / cpu, "threads": ranks[0]["threads"]}  # fmt: skip


# --------------------------------------------------------------------------- the table


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one a source and process count, with its speed-up over one process."""
    header = ("| source | processes | torch threads each | rows | rows/s | vs one process | encoders' share "
              "| cores used | rows per CPU-second | end-to-end s |")  # fmt: skip
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    single = {r["source"]: r["rows_per_s"] for r in results if r["processes"] == 1}
    for r in results:
        speedup = f"{r['rows_per_s'] / single[r['source']]:.2f}x" if r["source"] in single else "-"
        lines.append(f"| {r['source']} | {r['processes']} | {r['threads']} | {r['rows']} | {r['rows_per_s']:.0f} | "
                     f"{speedup} | {100 * r['encoders']:.1f}% | {r['cores']:.2f} | {r['per_core']:.0f} | "
                     f"{r['wall']:.1f} |")  # fmt: skip
    return lines


def verdict(results: list[dict[str, Any]]) -> str:
    """Whether the issue's two goals hold on this run."""
    share = min(r["encoders"] for r in results)
    single = {r["source"]: r["rows_per_s"] for r in results if r["processes"] == 1}
    speedups = [r["rows_per_s"] / single[r["source"]] for r in results if r["processes"] == 2 and r["source"] in single]
    said = f"lowest encoders' share {100 * share:.1f}% (goal >= {100 * GOAL_SHARE:.0f}%)"
    if speedups:
        said += f"; two processes {min(speedups):.2f}x-{max(speedups):.2f}x one (goal >= {GOAL_SPEEDUP}x)"
    return said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=None, help="pictures a source (default 2048; --sdxl 256)")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--processes", default=None, help="comma-separated process counts (default 1,2; --sdxl: "
                        "1 and, with two GPUs, 2)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sdxl", action="store_true", help="SDXL size: 1024 px, SDXL's VAE and text encoders")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    # one process of a run (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--data", "--out", "--report", "--teacher"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="cache-throughput-") as tmp:
        measure(args, args.work or Path(tmp))


def _process_counts(args: argparse.Namespace) -> list[int]:
    if args.processes:
        return [int(n) for n in args.processes.split(",")]
    if not args.sdxl:
        return [1, 2]
    import torch

    return [1, 2] if torch.cuda.device_count() >= 2 else [1]


def measure(args: argparse.Namespace, work: Path) -> None:
    names = [name for name in args.sources.split(",") if name]
    if unknown := sorted(set(names) - set(SOURCES)):
        raise SystemExit(f"unknown sources {unknown}: choose from {', '.join(SOURCES)}")
    size = SDXL_SIZE if args.sdxl else TINY_SIZE
    rows = args.rows or (256 if args.sdxl else 2048)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sources = build_sources(work / "data", rows, size, names)
    args.teacher = build_sdxl_teacher(work / "teacher") if args.sdxl else "tiny-sdxl"
    args.resolution = size
    print(f"{len(names)} sources of {rows} pictures at {size} px built in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)  # fmt: skip
    results = []
    for name, data in sources.items():
        for processes in _process_counts(args):
            figures = run_once(data, processes, args, work / "run")
            results.append({"source": name, "processes": processes, **figures})
            print(f"{name}, {processes} process(es): {figures['rows_per_s']:.0f} rows/s, encoders "
                  f"{100 * figures['encoders']:.1f}%", file=sys.stderr)  # fmt: skip
    where = f"{args.device}, {os.cpu_count()} cores" if args.device == "cpu" else args.device
    title = f"`pruner cache` at {size} px ({'SDXL VAE and text encoders' if args.sdxl else 'tiny-sdxl'}; {where})"
    lines = [title, "", *table(results), "", verdict(results)]
    print("\n".join(lines))
    if args.markdown is not None:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
