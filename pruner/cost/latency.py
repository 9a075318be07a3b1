"""Measured latency of a UNet call, whole and per module, with the conditions recorded beside it."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pruner.cost.flops import dummy_inputs

__all__ = ["Latency", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """Median milliseconds of one UNet call (and of chosen modules within it), with how it was measured."""

    device: str
    dtype: str
    latent: int
    batch: int
    warmup: int
    runs: int
    total_ms: float
    modules_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(unet: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    added = {"text_embeds": args[3], "time_ids": args[4]} if len(args) > 3 else None
    unet(args[0], args[1], args[2], added_cond_kwargs=added, return_dict=False)


def _time_calls(unet: nn.Module, args: tuple, device: torch.device, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        _call(unet, args)
    if device.type == "cuda":
        return _time_cuda(unet, args, device, runs)
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        _call(unet, args)
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _time_cuda(unet: nn.Module, args: tuple, device: torch.device, runs: int) -> list[float]:
    """GPU time of each call between CUDA events (the launch queue drained before each), recorded on the
    model's device's stream: an event records on the current device's, which for a worker on cuda:1 of a
    process whose current device is cuda:0 would time nothing."""
    times = []
    stream = torch.cuda.current_stream(device)
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record(stream)
        _call(unet, args)
        end.record(stream)
        torch.cuda.synchronize(device)
        times.append(float(start.elapsed_time(end)))
    return times


def _time_modules(unet: nn.Module, args: tuple, device: torch.device, names: list[str], runs: int) -> dict[str, float]:
    """Per-module medians, in a separate pass: the synchronising hooks would distort the whole-call time."""
    samples: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, float] = {}
    handles = []
    modules = dict(unet.named_modules())
    for name in names:

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            _sync(device)
            starts[name] = time.perf_counter()

        def post(_m: nn.Module, _a: Any, _o: Any, name: str = name) -> None:
            _sync(device)
            samples[name].append((time.perf_counter() - starts[name]) * 1000)

        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    try:
        for _ in range(runs):
            _call(unet, args)
    finally:
        for h in handles:
            h.remove()
    return {name: statistics.median(samples[name]) if samples[name] else 0.0 for name in names}


@torch.no_grad()
def measure_latency(
    unet: nn.Module,
    latent: int,
    *,
    batch: int = 1,
    seq_len: int = 77,
    warmup: int = 2,
    runs: int = 5,
    modules: Iterable[str] = (),
) -> Latency:
    """Median latency of ``runs`` calls after ``warmup`` calls, on the model's own device and dtype."""
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    config: Any = unet.config
    args = dummy_inputs(config, latent, batch, seq_len, device, dtype)
    unet.eval()
    total = statistics.median(_time_calls(unet, args, device, warmup, runs))
    per_module = _time_modules(unet, args, device, list(modules), runs) if modules else {}
    return Latency(str(device), str(dtype).removeprefix("torch."), latent, batch, warmup, runs, total, per_module)
