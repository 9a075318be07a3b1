"""The KD engine: one step for the search's proxy and for the distiller."""

from __future__ import annotations

import pytest
import torch
from test_trainer import PLAN, fake_cache, make

from pruner.diffusion import sdxl_scheduler
from pruner.distillation.engine import KDEngine, PlainRuntime, make_optimizer, teacher_pass
from pruner.distillation.hooks import FeatureRecorder
from pruner.distillation.losses import LossWeights
from pruner.distillation.trainer import batch_inputs, collate
from pruner.errors import PrunerError
from pruner.study import proxy
from pruner.unet import build_student, feature_map, layout_of, topology_of


def test_the_proxy_and_the_distiller_take_the_same_step(tiny_sdxl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    real = KDEngine.step

    def spy(self, inputs, teacher):  # type: ignore[no-untyped-def]
        calls.append(type(self.runtime).__name__)
        return real(self, inputs, teacher)

    monkeypatch.setattr(KDEngine, "step", spy)
    d = make(tiny_sdxl, steps=2)
    d.run(2)
    d.close()
    topo = topology_of(tiny_sdxl)
    calib = proxy.build_calibration(tiny_sdxl, fake_cache(), topo, n_train=8, n_held_out=8, level="sub_block",
                                    scheduler=sdxl_scheduler())  # fmt: skip
    proxy.proxy_score(tiny_sdxl, PLAN, topo, calib, steps=3, batch=4)
    assert calls == ["AccelerateRuntime"] * 2 + ["PlainRuntime"] * 3


def test_a_step_on_cached_teacher_outputs_equals_a_step_on_the_live_teacher(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    topo = topology_of(tiny_sdxl)
    pairs = feature_map(layout_of(PLAN, topo), topo, "sub_block")
    inputs = batch_inputs(collate(fake_cache(), range(4)), sdxl_scheduler(), torch.Generator().manual_seed(0))
    with FeatureRecorder(tiny_sdxl, [t for _, t in pairs]) as rec:
        live = teacher_pass(tiny_sdxl, inputs, rec)
    cached = type(live)(live.pred.clone(), {k: v.clone() for k, v in live.features.items()})
    weights = []
    for out in (live, cached):
        student, _ = build_student(tiny_sdxl, PLAN)
        opt = make_optimizer(student.parameters(), 1e-3)
        engine = KDEngine(student, student, pairs, LossWeights(normalize_features=True), sdxl_scheduler(), opt,
                          PlainRuntime("cpu"))  # fmt: skip
        terms = engine.step(inputs, out)
        engine.close()
        assert torch.isfinite(terms.total) and float(terms.feature_kd) > 0
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-7)


def test_a_bf16_autocast_step_runs_on_the_cpu(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    topo = topology_of(tiny_sdxl)
    calib = proxy.build_calibration(tiny_sdxl, fake_cache(), topo, n_train=8, n_held_out=4, level="sub_block",
                                    scheduler=sdxl_scheduler())  # fmt: skip
    score = proxy.proxy_score(tiny_sdxl, PLAN, topo, calib, steps=2, batch=4, runtime=PlainRuntime("cpu", "bf16"))
    assert score.steps == 2 and score.proxy_kd == pytest.approx(score.proxy_kd) and score.proxy_kd > 0


def test_features_too_big_for_the_gpu_go_to_disk_in_half_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = {"a": torch.Size([320, 128, 128]), "b": torch.Size([1280, 32, 32])}
    gpu = torch.device("cuda")
    monkeypatch.setattr(proxy, "memory_for_features", lambda dev: 10**9)
    monkeypatch.setattr(proxy, "disk_for_features", lambda: 10**12)
    plan = proxy.plan_calibration(shapes, 96, 128, 128, gpu, torch.bfloat16)
    assert plan.where.startswith("disk") and plan.dtype == torch.float16 and plan.rows == 96
    assert "1024px" in plan.describe() and "GiB" in plan.describe()
    store, backing = proxy._allocate(plan, {"a": torch.Size([2, 3])})
    store["a"][torch.tensor([0, 5])] = torch.ones(2, 2, 3, dtype=torch.float16)
    assert store["a"].shape == (96, 2, 3) and float(store["a"][5].sum()) == 6.0
    assert backing is not None
    backing.close()
    monkeypatch.setattr(proxy, "disk_for_features", lambda: 10 * 6_553_600 * 2)  # room for 10 rows in fp16
    assert proxy.plan_calibration(shapes, 96, 128, 128, gpu, torch.bfloat16).rows == 10
    monkeypatch.setattr(proxy, "memory_for_features", lambda dev: 10**13)
    assert proxy.plan_calibration(shapes, 96, 128, 128, gpu, torch.bfloat16).where == "cuda"
    # the printed resolution is the teacher's own (the bundled teacher's VAE halves twice, not three times)
    assert "512px" in proxy.plan_calibration(shapes, 96, 128, 128, gpu, torch.bfloat16, vae_scale=4).describe()


def test_a_cpu_search_keeps_features_in_host_memory_only_when_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = {"a": torch.Size([320, 128, 128])}  # SDXL-like: 5.2 M values a row, 96 rows = 2 GB in fp32
    cpu = torch.device("cpu")
    assert proxy.memory_for_features(cpu) > 0 and proxy.disk_for_features() > 0
    monkeypatch.setattr(proxy, "memory_for_features", lambda dev: 10**10)
    assert proxy.plan_calibration(shapes, 96, 8, 128, cpu, torch.float32).where == "cpu"
    monkeypatch.setattr(proxy, "memory_for_features", lambda dev: 10**9)
    monkeypatch.setattr(proxy, "disk_for_features", lambda: 10**12)
    plan = proxy.plan_calibration(shapes, 96, 8, 128, cpu, torch.float32)
    assert plan.where.startswith("disk") and plan.dtype == torch.float16


def test_the_proxy_trains_on_features_memory_mapped_on_disk(tiny_sdxl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The path an SDXL search takes when its features outgrow the device, run end to end at tiny size."""
    topo = topology_of(tiny_sdxl)

    def score() -> tuple[proxy.Calibration, proxy.ProxyScore]:
        calib = proxy.build_calibration(tiny_sdxl, fake_cache(), topo, n_train=8, n_held_out=4, level="sub_block",
                                        scheduler=sdxl_scheduler())  # fmt: skip
        return calib, proxy.proxy_score(tiny_sdxl, PLAN, topo, calib, steps=3, batch=4)

    calib, in_memory = score()
    assert calib.plan is not None and calib.plan.where == "cpu"
    monkeypatch.setattr(proxy, "memory_for_features", lambda dev: 0)
    calib, on_disk = score()
    assert calib.plan is not None and calib.plan.where.startswith("disk") and calib.plan.rows == 8
    assert all(f.dtype == torch.float16 for f in calib.teacher_features.values())
    assert on_disk.zero_shot_kd == in_memory.zero_shot_kd  # predictions are not stored on disk
    assert on_disk.proxy_kd == pytest.approx(in_memory.proxy_kd, rel=1e-2)  # fp16 features, same training


def test_a_bf16_run_freezes_the_teacher_in_bf16_on_any_device() -> None:
    from pruner.device import teacher_dtype

    cpu = torch.device("cpu")
    assert teacher_dtype(cpu) == torch.float32 and teacher_dtype(cpu, "no") == torch.float32
    assert teacher_dtype(cpu, "bf16") == torch.bfloat16
    assert teacher_dtype(cpu, "fp16") == torch.bfloat16  # as PlainRuntime: CPU autocast takes bf16
    assert teacher_dtype(torch.device("cuda"), "fp16") == torch.float16


def test_a_bf16_teacher_on_the_cpu_caches_bf16_features_and_scores_plans(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    """The GPU's dtype path (half teacher, half features, fp32 student under autocast), rehearsed on a CPU."""
    import copy

    teacher = copy.deepcopy(tiny_sdxl).to(torch.bfloat16)
    topo = topology_of(teacher)
    calib = proxy.build_calibration(teacher, fake_cache(), topo, n_train=8, n_held_out=4, level="sub_block",
                                    scheduler=sdxl_scheduler())  # fmt: skip
    assert calib.plan is not None and calib.plan.dtype == torch.bfloat16 and calib.teacher_pred.dtype == torch.bfloat16
    score = proxy.proxy_score(teacher, PLAN, topo, calib, steps=2, batch=4, runtime=PlainRuntime("cpu", "bf16"))
    assert 0 < score.proxy_kd < float("inf") and 0 < score.zero_shot_kd < float("inf")
    sens = proxy.unit_sensitivity(teacher, topo, calib, sorted(PLAN.removed), 4)
    assert all(0 < v < float("inf") for v in sens.values())


def test_a_worker_on_a_numbered_gpu_makes_it_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pruner search --device cuda:1`: CUDA events, streams and bare "cuda" tensors follow the worker's GPU
    (torch.cuda.device, faked here: this machine has none); a CPU or a bare "cuda" changes nothing."""
    import contextlib

    from pruner.device import current_device

    made: list[torch.device] = []

    def recording_device(d: torch.device) -> contextlib.nullcontext[None]:
        made.append(d)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "device", recording_device)
    with current_device(torch.device("cuda:1")), current_device(torch.device("cpu")):
        pass
    with current_device(torch.device("cuda")):
        pass
    assert made == [torch.device("cuda:1")]


def test_the_8bit_optimizer_without_bitsandbytes_says_which_extra_to_install() -> None:
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    with pytest.raises(PrunerError, match=r"pruner\[gpu\]"):
        make_optimizer(torch.nn.Linear(2, 2).parameters(), 1e-3, eight_bit=True)


def test_a_small_cache_keeps_a_held_out_share_of_the_calibration() -> None:
    assert proxy.split_rows(1000, 384, 128) == (384, 128)  # enough rows: as asked
    assert proxy.split_rows(200, 384, 128) == (150, 50)  # short: the asked 3:1, not 198 + 2
    assert proxy.split_rows(5, 384, 128) == (3, 2)


def test_half_precision_on_a_cpu_without_native_bf16_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from pruner.device import slow_half_note

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    note = slow_half_note(cpu, "bf16")
    assert note is not None and "--mixed-precision no" in note
    assert slow_half_note(cpu, "no") is None and slow_half_note(cpu, None) is None
    assert slow_half_note(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert slow_half_note(cpu, "bf16") is None


def test_a_module_sensitivity_is_the_zero_shot_kd_of_its_layers_removed_together(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    """Skipping a module's layers in place together scores what a student built without them scores; and
    not what its layers' own scores add up to (the interaction the per-unit criterion misses)."""
    from pruner.distillation.engine import held_out_kd
    from pruner.study.heuristics import attention_modules
    from pruner.unet import Plan

    topo = topology_of(tiny_sdxl)
    calib = proxy.build_calibration(tiny_sdxl, fake_cache(), topo, n_train=4, n_held_out=8, level="sub_block",
                                    scheduler=sdxl_scheduler())  # fmt: skip
    modules = attention_modules(topo, lambda _n: True)
    module = "up_blocks.0.attentions.1"
    sens = proxy.group_sensitivity(tiny_sdxl, calib, {module: modules[module]}, batch=4)
    student, _ = build_student(tiny_sdxl, Plan(frozenset(modules[module])))
    built = held_out_kd(student, calib.held_out_batches(4))
    assert sens[module] == pytest.approx(built, rel=1e-4)
    alone = proxy.unit_sensitivity(tiny_sdxl, topo, calib, modules[module], batch=4)
    assert sens[module] > 0 and sens[module] != pytest.approx(sum(alone.values()), rel=1e-3)
    one = modules[module][0]
    assert proxy.group_sensitivity(tiny_sdxl, calib, {one: [one]}, batch=4)[one] == pytest.approx(alone[one])


def test_unit_sensitivities_measured_on_two_forked_workers_are_one_process_s(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    """The search measures units on each idle core at once: every unit's score (layers skipped in place,
    blocks built as students) is what one process measures, under the unit's own name."""
    import sys

    if sys.platform != "linux":
        pytest.skip("forked workers are used on Linux only")
    topo = topology_of(tiny_sdxl)
    calib = proxy.build_calibration(tiny_sdxl, fake_cache(), topo, n_train=4, n_held_out=8, level="sub_block",
                                    scheduler=sdxl_scheduler())  # fmt: skip
    names = [*sorted(PLAN.removed), "down_blocks.0.resnets.0", "up_blocks.0.attentions.1.transformer_blocks.0"]
    one = proxy.unit_sensitivity(tiny_sdxl, topo, calib, names, batch=4)
    two = proxy.unit_sensitivity(tiny_sdxl, topo, calib, names, batch=4, workers=2)
    assert list(two) == names and list(one) == names
    assert two == pytest.approx(one, rel=1e-5)
    assert len(set(one.values())) > 2  # the units differ: a mix-up of names would show


def test_adamw_is_fused_where_torch_fuses_it_and_steps_as_the_loop_does() -> None:
    """On a CPU the fused AdamW (one kernel over every parameter) replaces torch's per-parameter loop: the
    same update to float rounding; asked not to fuse, it is torch's default."""
    torch.manual_seed(0)
    nets = [torch.nn.Linear(8, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0].weight.detach().clone()
    fused, loop = make_optimizer(nets[0].parameters(), 1e-2), make_optimizer(nets[1].parameters(), 1e-2, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    x = torch.randn(16, 8)
    for _ in range(20):
        for net, opt in zip(nets, (fused, loop), strict=True):
            net(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(nets[0].weight, start)  # they did step
