"""onnxruntime against PyTorch on this CPU: the bundled teacher and a student, one UNet call each.

Both runtimes get the same inputs and thread count; the four calls (teacher and student, PyTorch and
onnxruntime) are taken in turn, round after round, so that load from other processes falls on all alike;
medians are shown, and the ratios are taken within this one run.

    python benchmarks/onnx_latency.py                       # tiny-sdxl and its found student, batch 2
    python benchmarks/onnx_latency.py --threads 2 --runs 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import pruner
from pruner.compat.onnx_export import OnnxUNet, export_onnx, onnx_inputs
from pruner.unet.load import load_unet

ROOT = Path(__file__).resolve().parents[1]


def _ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def calls(unet: torch.nn.Module, folder: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export ``unet``; its PyTorch and onnxruntime calls on one input, its size and the export's check."""
    import onnxruntime

    report = export_onnx(unet, folder / f"{name}.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
    config = dict(unet.config)  # type: ignore[arg-type]
    inputs = onnx_inputs(config, args.batch, args.latent, args.latent, torch.float32)
    feed = {k: v.numpy() for k, v in inputs.items()}
    model = OnnxUNet(unet, config.get("addition_embed_type") == "text_time").eval()

    def torch_call() -> object:
        with torch.no_grad():
            return model(*inputs.values())

    params = sum(p.numel() for p in unet.parameters())
    return {"torch": torch_call, "ort": lambda: session.run(None, feed), "params": params, "diff": report.max_abs_diff}


def interleaved_ms(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms of each call, the calls taken in turn ``runs`` times (after 3 warm-up rounds)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(runs + 3):
        for name, fn in fns.items():
            ms = _ms(fn)
            if round_ >= 3:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="tiny-sdxl")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml"))
    parser.add_argument("--latent", type=int, default=8, help="latent side (the bundled teacher draws 32 px: 8)")
    parser.add_argument("--batch", type=int, default=2, help="2: one prompt with classifier-free guidance")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"teacher": load_unet(args.teacher), "student": pruner.build_student(args.teacher, args.recipe)}
    with tempfile.TemporaryDirectory() as folder:
        rows = {name: calls(unet.eval(), Path(folder), name, args) for name, unet in models.items()}
        fns = {f"{name} {rt}": row[rt] for name, row in rows.items() for rt in ("torch", "ort")}
        ms = interleaved_ms(fns, args.runs)
    for name, row in rows.items():
        row.update(torch=ms[f"{name} torch"], ort=ms[f"{name} ort"])
    print(f"UNet call, batch {args.batch}, latent {args.latent}x{args.latent}, {args.threads} thread(s), "
          f"median of {args.runs} interleaved rounds, fp32")  # fmt: skip
    print("| model | params | PyTorch ms | onnxruntime ms | PyTorch / onnxruntime | ORT vs PyTorch max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['torch']:.2f} | {r['ort']:.2f} | "
              f"{r['torch'] / r['ort']:.2f}x | {r['diff']:.1e} |")  # fmt: skip
    t, s = rows["teacher"], rows["student"]
    print(f"student vs teacher speedup: PyTorch {t['torch'] / s['torch']:.2f}x, onnxruntime {t['ort'] / s['ort']:.2f}x")


if __name__ == "__main__":
    main()
