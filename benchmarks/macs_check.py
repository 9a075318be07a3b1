"""Check pruner's MAC count (fvcore + attention handles) against torch's FlopCounterMode on the meta device.

FlopCounterMode counts matmul-class ops (2 flops per multiply-add) and skips norms and upsampling, which
fvcore counts; so the comparison sets those fvcore ops aside. Prints one table.

    python benchmarks/macs_check.py --arch sdxl --resolution 1024      # about a minute, ~14 GB, cached after
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pruner.cost import CostModel, dummy_inputs
from pruner.unet import Plan, architecture_config, meta_unet

NOT_IN_FLOP_COUNTER = ("group_norm", "layer_norm", "upsample_nearest2d")


def flop_counter_macs(config: dict, latent: int, batch: int) -> int:
    unet = meta_unet(config)
    args = dummy_inputs(config, latent, batch, device="meta")
    added = {"text_embeds": args[3], "time_ids": args[4]} if len(args) > 3 else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(args[0], args[1], args[2], added_cond_kwargs=added)
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sdxl")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    config = architecture_config(args.arch)
    latent = args.resolution // 8
    t0 = time.perf_counter()
    cost = CostModel(config, latent=latent, batch=args.batch)
    ours = cost.macs(Plan())
    t1 = time.perf_counter()
    by_op = cost.by_operator()
    set_aside = sum(by_op.get(op, 0) for op in NOT_IN_FLOP_COUNTER)
    theirs = flop_counter_macs(config, latent, args.batch)
    t2 = time.perf_counter()
    comparable = ours - set_aside
    print(f"{'count':<44}{'MACs':>22}")
    print(f"{'pruner (fvcore + sdpa/baddbmm handles)':<44}{ours:>22,}")
    print(f"{'  of which norms and upsampling':<44}{set_aside:>22,}")
    print(f"{'  without them':<44}{comparable:>22,}")
    print(f"{'torch FlopCounterMode on meta / 2':<44}{theirs:>22,}")
    print(f"ratio {comparable / theirs:.6f} (difference {100 * (comparable - theirs) / theirs:+.4f}%)")
    print(f"by op: { {k: v for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])} }")
    print(f"time: pruner {t1 - t0:.1f}s (cached after the first run), FlopCounterMode {t2 - t1:.1f}s")


if __name__ == "__main__":
    main()
