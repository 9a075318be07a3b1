from __future__ import annotations

from pruner.cost.latency import measure_latency


def test_latency_records_its_conditions_and_per_module_times(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    lat = measure_latency(
        tiny_sdxl, 8, batch=2, seq_len=7, warmup=1, runs=3, modules=["mid_block", "down_blocks.2.attentions.0"]
    )
    assert (lat.device, lat.dtype, lat.latent, lat.batch, lat.runs) == ("cpu", "float32", 8, 2, 3)
    assert lat.total_ms > 0
    assert set(lat.modules_ms) == {"mid_block", "down_blocks.2.attentions.0"}
    assert 0 < lat.modules_ms["mid_block"] < lat.total_ms * 5
