"""MACs of a UNet call, per module, counted by fvcore with attention included.

fvcore counts one multiply-add as one "flop", so the numbers here are MACs. It does not count
``aten::scaled_dot_product_attention`` (what diffusers' attention runs) or ``aten::baddbmm`` by default;
both get handles here. fvcore traces real tensors under ``torch.no_grad()`` (not the meta device).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from math import prod
from typing import Any

import torch
from torch import nn

from pruner.errors import PrunerError

__all__ = ["MATMUL_CLASS_OPS", "MacCount", "count_macs", "dummy_inputs"]

MATMUL_CLASS_OPS = frozenset(
    {
        "aten::matmul", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::addbmm",
        "aten::einsum", "aten::linear", "aten::_convolution", "aten::conv2d", "aten::convolution",
        "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
    }
)  # fmt: skip


def get_shape(value: Any) -> list[int]:
    """Shape of a traced value (fvcore's helper, imported late: fvcore loads only when counting)."""
    from fvcore.nn.jit_handles import get_shape as fvcore_get_shape

    return fvcore_get_shape(value)


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """Q K^T and the weighted sum of V: B*H*Lq*Lk*(D + Dv) multiply-adds (softmax not counted)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """beta*input + batch1 @ batch2 with batch1 (b, n, m) and batch2 (b, m, p): b*n*m*p multiply-adds."""
    b, n, m = get_shape(inputs[1])
    p = get_shape(inputs[2])[-1]
    return b * n * m * p


class _UNetCall(nn.Module):
    """Positional-argument wrapper: fvcore's tracer needs plain tensors in and out."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


def dummy_inputs(
    config: Mapping[str, Any],
    latent: int,
    batch: int = 1,
    seq_len: int = 77,
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Inputs of one UNet call at ``latent`` x ``latent`` (SDXL's ``text_time`` conditioning included)."""
    kw = {"device": device, "dtype": dtype}
    cross = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    args = [
        torch.randn(batch, config["in_channels"], latent, latent, **kw),
        torch.full((batch,), 500, device=device, dtype=torch.long),
        torch.randn(batch, seq_len, cross, **kw),
    ]
    kind = config.get("addition_embed_type")
    if kind == "text_time":
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        args += [torch.randn(batch, text_dim, **kw), torch.randn(batch, 6, **kw)]
    elif kind is not None:
        raise PrunerError(f"addition_embed_type {kind!r} is not supported; pruner handles SD 1.x and SDXL conditioning")
    return tuple(args)


class MacCount(dict):
    """Module path -> MACs of one call (children included), with ``total`` and the ``unsupported`` ops."""

    total: int
    unsupported: Counter
    by_operator: dict[str, int]


def count_macs(unet: nn.Module, latent: int, batch: int = 1, seq_len: int = 77) -> MacCount:
    """Count a UNet call's MACs per module with fvcore (weights must live on a real device)."""
    param = next(unet.parameters())
    if param.device.type == "meta":
        raise PrunerError("fvcore cannot count on the meta device; materialise the model first (to_empty)")
    from fvcore.nn import FlopCountAnalysis

    config: Any = unet.config
    args = dummy_inputs(config, latent, batch, seq_len, param.device, param.dtype)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        analysis = FlopCountAnalysis(_UNetCall(unet).eval(), args)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs, "aten::baddbmm", _baddbmm_macs)
        analysis.tracer_warnings("none").unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = analysis.by_module()
        by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
    out = MacCount(
        {k.removeprefix("unet.").removeprefix("unet"): int(v) for k, v in by_module.items() if k.startswith("unet")}
    )
    out.total = int(analysis.total())
    out.unsupported = Counter(analysis.unsupported_ops())
    out.by_operator = by_operator
    return out
