from __future__ import annotations

import pytest
import torch
from conftest import SEQ, TINY_SDXL, random_plans

from pruner.cost import MATMUL_CLASS_OPS, CostModel, count_macs
from pruner.cost import model as cost_model
from pruner.unet import Plan, build_student, topology_of


@pytest.mark.slow
def test_composed_cost_equals_a_direct_count_of_the_built_student(tiny_unet) -> None:  # type: ignore[no-untyped-def]
    latent = tiny_unet.config.sample_size
    cost = CostModel(tiny_unet.config, latent=latent, seq_len=SEQ, teacher=tiny_unet)
    plans = random_plans(topology_of(tiny_unet), 14, seed=11, p=0.35)
    assert any(cost.layout(p).up_offset for p in plans), "the sample should include a removed stage"
    for plan in plans:
        student, _ = build_student(tiny_unet, plan)
        assert cost.macs(plan) == count_macs(student, latent, 1, SEQ).total
        assert cost.params(plan) == sum(p.numel() for p in student.parameters())


def test_no_matmul_class_op_goes_uncounted(tiny_unet) -> None:  # type: ignore[no-untyped-def]
    counts = count_macs(tiny_unet, tiny_unet.config.sample_size, 2, SEQ)
    assert not set(counts.unsupported) & MATMUL_CLASS_OPS, counts.unsupported
    assert counts.by_operator.get("scaled_dot_product_attention", 0) > 0


def test_attention_is_counted_as_qk_plus_av() -> None:
    attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    class SDPA(torch.nn.Module):
        def forward(self, q, k, v):  # type: ignore[no-untyped-def]
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    from fvcore.nn import FlopCountAnalysis

    from pruner.cost.flops import _sdpa_macs

    q, k, v = torch.randn(3, 2, 10, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 5)
    analysis = FlopCountAnalysis(SDPA(), (q, k, v)).set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    assert analysis.total() == 3 * 2 * 10 * 7 * (8 + 5)
    del attn


def test_mac_tables_are_cached_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    first = CostModel(TINY_SDXL, latent=8, seq_len=SEQ).macs(Plan())

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("fvcore ran again")

    monkeypatch.setattr(cost_model, "count_macs", boom)
    assert CostModel(TINY_SDXL, latent=8, seq_len=SEQ).macs(Plan()) == first
    with pytest.raises(AssertionError):
        CostModel(TINY_SDXL, latent=8, batch=2, seq_len=SEQ).macs(Plan())  # another key: counted afresh


def test_unit_macs_add_up_exactly() -> None:
    cost = CostModel(TINY_SDXL, latent=8, seq_len=SEQ)
    names = ["down_blocks.2.attentions.0.transformer_blocks.2", "up_blocks.1.attentions.0.transformer_blocks.1"]
    alone = [cost.macs(Plan()) - cost.macs(Plan.removing([n])) for n in names]
    assert cost.macs(Plan()) - cost.macs(Plan.removing(names)) == sum(alone) > 0
