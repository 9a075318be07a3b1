"""The latency model composes measured module times over a plan's layout like the exact count tables."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import SEQ, random_plans
from torch import nn

from pruner.cost import CostModel, count_params, params_by_module
from pruner.cost.latency import Latency
from pruner.cost.latency_model import LatencyModel, fit_line, table_modules
from pruner.unet import Plan, build_student, nearest_expressible, topology_of


def _params_as_time(model: nn.Module, names: list[str]) -> Latency:
    """A stand-in clock: every module 'takes' one microsecond per parameter, so compositions can be
    checked exactly against a count of the built student."""
    per_module = params_by_module(model)
    return Latency("cpu", "float32", 8, 2, 0, 1, count_params(model) / 1000, {n: per_module[n] / 1000 for n in names})


def test_a_plan_is_timed_as_the_sum_of_its_modules(tiny_unet) -> None:  # type: ignore[no-untyped-def]
    cost = CostModel(tiny_unet.config, latent=tiny_unet.config.sample_size, seq_len=SEQ, teacher=tiny_unet)
    calls: list[int] = []

    def timer(model: nn.Module, names: list[str]) -> Latency:
        calls.append(len(names))
        return _params_as_time(model, names)

    model = LatencyModel(cost, tiny_unet, timer=timer, rounds=2)
    topo = topology_of(tiny_unet)
    stage = nearest_expressible(Plan.removing([f"down_blocks.{topo.n_blocks - 1}"]), topo)
    for plan in [Plan(), stage, *random_plans(topo, 6, seed=5)]:
        student, _ = build_student(tiny_unet, plan)
        assert model.ms(plan) * 1000 == pytest.approx(sum(p.numel() for p in student.parameters()), abs=2), plan
    assert len(calls) == 4  # two rounds per base, each base timed once: the teacher and the one without its stage


def test_narrower_feed_forwards_are_timed_in_proportion(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    cost = CostModel(tiny_sdxl.config, latent=tiny_sdxl.config.sample_size, seq_len=SEQ, teacher=tiny_sdxl)
    model = LatencyModel(cost, tiny_sdxl, timer=_params_as_time, rounds=1)
    plan = Plan(ff_keep=((1, 0.5), (2, 0.25)))
    student, _ = build_student(tiny_sdxl, plan)
    # the stand-in clock scales the output bias with width too, so this is close, not exact
    assert model.ms(plan) * 1000 == pytest.approx(sum(p.numel() for p in student.parameters()), rel=0.01)
    assert model.ms(plan) < model.ms(Plan())


def test_only_the_modules_a_table_reads_are_timed(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    names = table_modules(tiny_sdxl)
    assert "mid_block" in names and "down_blocks.1.attentions.0.transformer_blocks.1.ff" in names
    assert "down_blocks.0.resnets.1" in names and "up_blocks.2.resnets.2" in names
    assert not any(n.endswith((".conv1", ".attn1", ".proj_in", ".net")) or "downsamplers" in n for n in names)


def test_calibration_fits_whole_students_where_summed_module_times_do_not(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    """A device where the whole call costs a fixed 3 ms plus half the module sum (launches overlap, as on a
    GPU): the calibrated estimate follows whole students, the bare sum does not."""

    def gpu_like(model: nn.Module, names: list[str]) -> Latency:
        per = _params_as_time(model, names)
        return dataclasses.replace(per, total_ms=3.0 + 0.5 * per.total_ms)

    cost = CostModel(tiny_sdxl.config, latent=tiny_sdxl.config.sample_size, seq_len=SEQ, teacher=tiny_sdxl)
    model = LatencyModel(cost, tiny_sdxl, timer=gpu_like, rounds=1, anchors=3)
    _fixed, scale = model.calibrate(0)
    assert scale == pytest.approx(0.5, rel=1e-3)
    for plan in random_plans(topology_of(tiny_sdxl), 4, seed=9):
        student, _ = build_student(tiny_sdxl, plan)
        whole = 3.0 + 0.5 * sum(p.numel() for p in student.parameters()) / 1000
        assert model.ms(plan) == pytest.approx(whole, rel=0.01)
        assert abs(model.composed_ms(plan) - whole) > 0.2 * whole


def test_a_line_through_too_few_points_is_the_identity() -> None:
    assert fit_line([1.0], [5.0]) == (0.0, 1.0)
    assert fit_line([1.0, 2.0], [3.0, 1.0]) == (0.0, 1.0)  # a falling line is noise, not a model
    assert fit_line([1.0, 2.0, 3.0], [12.0, 14.0, 16.0]) == pytest.approx((10.0, 2.0))
    assert fit_line([1.0, 2.0, 3.0, 4.0, 5.0], [12.0, 14.0, 30.0, 18.0, 20.0]) == pytest.approx((10.0, 2.0))  # outlier
