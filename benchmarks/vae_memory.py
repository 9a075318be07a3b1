"""Peak device memory and time of the VAE encoding a batch of pictures, whole and one picture at a time.

Why: `pruner cache` encodes pictures in batches (16 by default) through the teacher's VAE in fp32. At SDXL's
1024 px the whole-batch encoder's activations are what fills the GPU: the first GPU run of the SDXL path
(one H200) peaked at 51.75 GiB in the cache stage. Encoding one picture at a time (diffusers' VAE slicing)
gives the same latents; this measures what it saves and what it costs, both in one run.

    python benchmarks/vae_memory.py --device cuda                 # SDXL's VAE (random weights) at 1024 px
    python benchmarks/vae_memory.py --size 128 --batch 4          # a CPU check of the same (time only)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def encode(vae: torch.nn.Module, pixels: torch.Tensor, sliced: bool) -> tuple[torch.Tensor, float, float]:
    """Latents, seconds and peak GiB (on CUDA; 0 elsewhere) of one encoding of ``pixels``."""
    vae.use_slicing = sliced
    cuda = pixels.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return latents, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1024, help="picture side in pixels")
    parser.add_argument("--batch", type=int, default=16, help="pictures a batch (pruner cache's default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodings of each way (the least is kept)")
    parser.add_argument("--vae", choices=("sdxl", "tiny"), default="sdxl", help="SDXL's VAE or the bundled teacher's")
    args = parser.parse_args()
    from diffusers import AutoencoderKL
    from sdxl_scale import BUNDLED, SDXL_VAE

    torch.manual_seed(0)
    config = SDXL_VAE if args.vae == "sdxl" else AutoencoderKL.load_config(BUNDLED / "vae")
    vae = AutoencoderKL.from_config(config).to(args.device).eval()
    pixels = torch.rand(args.batch, 3, args.size, args.size, device=args.device) * 2 - 1
    runs: dict[bool, list[tuple[torch.Tensor, float, float]]] = {False: [], True: []}
    for _ in range(args.repeats + 1):  # the first of each way warms up and is not timed
        for sliced in (False, True):
            runs[sliced].append(encode(vae, pixels, sliced))
    diff = (runs[False][0][0] - runs[True][0][0]).abs().max().item()
    print(f"{args.vae} VAE encoder, fp32, {args.batch} pictures at {args.size} px on {args.device}")
    print(f"{'way':<22}{'best s':>9}{'pictures/s':>12}{'peak GiB':>10}")
    for name, sliced in (("whole batch", False), ("one picture at a time", True)):
        best = min(seconds for _, seconds, _ in runs[sliced][1:])
        peak = max(gib for _, _, gib in runs[sliced])
        print(f"{name:<22}{best:>9.3f}{args.batch / best:>12.2f}{peak:>10.2f}")
    print(f"latents max abs difference between the ways: {diff:.2e}")


if __name__ == "__main__":
    main()
