"""The benchmark scripts run (at tiny scale, on CPU) and print their tables; their timings are not tested."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    """Run a benchmark script; its environment is read at the call, so it shares the test's pruner cache
    (conftest: the bundled set built once a run) rather than the user's ~/.cache/pruner."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_scale_on_cpu(tmp_path: Path) -> None:
    out = run("benchmarks/gpu_check.py", "--tiny", "--steps", "1", "--runs", "2", "--json", str(tmp_path / "f.json"))
    assert "tiny-sdxl-vega" in out and "speedup" in out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["tiny-sdxl-vega"]["params"] < figures["teacher_params"]
    assert figures["tiny-sdxl-vega"]["speedup"] > 0 and figures["tiny-sdxl-bk-small"]["step_s"] > 0


@pytest.mark.slow
def test_distill_step_benchmark_prints_the_overhead() -> None:
    out = run("benchmarks/distill_step.py", "--steps", "1", "--batch", "2")
    assert "overhead" in out and all(level in out for level in ("block", "sub_block", "layer"))


@pytest.mark.slow
def test_optimizer_step_benchmark_compares_the_fused_adamw_with_the_loop() -> None:
    out = run("benchmarks/optimizer_step.py", "--steps", "2", "--batch", "2")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("loop ", "fused "))}
    assert set(rows) == {"loop", "fused"} and rows["loop"][-1] == "1.00x"
    assert all(float(v) > 0 for kind in rows.values() for v in kind[:2])
    drift = float(out.rsplit(":", 1)[1])
    assert drift < 1e-4  # the same update, to float rounding


@pytest.mark.slow
def test_latency_model_benchmark_prints_estimate_against_measured() -> None:
    out = run("benchmarks/latency_model.py", "--plans", "2", "--rounds", "1", "--runs", "2")
    assert "estimate ms" in out and "summed (uncalibrated)" in out and len(out.strip().splitlines()) == 7


@pytest.mark.slow
def test_lora_port_benchmark_prints_the_behaviour_table(tmp_path: Path) -> None:
    out = run("benchmarks/lora_port.py", "--out", str(tmp_path), "--lora-steps", "2", "--lora-batch", "4",
              "--distill-steps", "2", "--n-train", "16", "--n-eval", "4", "--steps", "2")  # fmt: skip
    assert "student + ported LoRA" in out and "student + LoRA loaded as it is" in out and "carried over" in out


@pytest.mark.slow
def test_onnx_latency_benchmark_prints_both_runtimes_for_teacher_and_student() -> None:
    out = run("benchmarks/onnx_latency.py", "--runs", "2")
    assert "| teacher |" in out and "| student |" in out and "student vs teacher speedup" in out


def test_cache_throughput_benchmark_prints_its_table(tmp_path: Path) -> None:
    out = run("benchmarks/cache_throughput.py", "--rows", "8", "--sources", "folder", "--processes", "1",
              "--markdown", str(tmp_path / "table.md"))  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| folder |")]
    assert len(rows) == 1 and "| 1 | 1 | 8 |" in rows[0]  # one process, one torch thread, 8 rows
    assert "encoders' share" in out and "lowest encoders' share" in out
    assert (tmp_path / "table.md").read_text().strip() == out.strip()


def test_vae_memory_benchmark_compares_whole_batches_with_one_picture_at_a_time() -> None:
    out = run("benchmarks/vae_memory.py", "--vae", "tiny", "--size", "32", "--batch", "2", "--repeats", "1")
    assert "whole batch" in out and "one picture at a time" in out
    difference = float(out.strip().splitlines()[-1].split(":")[-1])
    assert difference < 1e-3  # the same latents either way


@pytest.mark.slow
def test_final_noise_distils_a_summary_plan_again_at_other_seeds(tmp_path: Path) -> None:
    plan = "99df6c245bf1b67a"
    results = ROOT / "benchmarks" / "results" / "search_oracle"
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / f"{plan}.yaml").write_bytes((results / "plans" / f"{plan}.yaml").read_bytes())
    summary = json.loads((results / "summary-30%.json").read_text())
    summary["plans"] = [p for p in summary["plans"] if p["key"] == plan]
    (tmp_path / "summary-30%.json").write_text(json.dumps(summary))
    out = run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps", "3",
              "--eval-n", "8", "--curve-every", "2", "--eval-seeds", "1",
              "--scratch", str(tmp_path / "scratch"))  # fmt: skip
    assert "1 of 1 plans distilled at seeds [1, 2]" in out and "pooled CV" in out
    assert not (tmp_path / "noise-30%.json").exists()  # the summary's own 1000-step tables are not overwritten
    noise = json.loads((tmp_path / "noise-30%-3steps.json").read_text())
    kd = noise["kd"][plan]
    assert set(kd) == {"1", "2"} and kd["1"] != kd["2"]  # the seed changes the distillation
    assert sorted(p.name for p in (tmp_path / "finals").iterdir()) == [f"{plan}-3-seed1.json", f"{plan}-3-seed2.json"]
    curve = json.loads((tmp_path / "finals" / f"{plan}-3-seed1.json").read_text())["curve"]
    assert [step for step, _ in curve][:2] == [2, 3] and all(kd > 0 for _, kd in curve)  # held-out KD kept along
    final = json.loads((tmp_path / "finals" / f"{plan}-3-seed1.json").read_text())
    assert set(final["evals"]) == {"1"} and final["evals"]["1"] != final["kd"]  # another held-out set, same student
    assert not any((tmp_path / "scratch").iterdir())  # the students are deleted once evaluated


def test_final_noise_separates_the_held_out_sets_shift_from_the_noise_that_reorders_plans(tmp_path: Path) -> None:
    """Fixed finals: set 1 reads every student 10% worse and reorders none; set 2 swaps the two best."""
    kd = {"a" * 16: (1.0, 1.1, 1.3), "b" * 16: (1.2, 1.32, 1.0), "c" * 16: (2.0, 2.2, 2.0), "d" * 16: (3.0, 3.3, 3.0)}
    roles = {"a" * 16: "oracle #1", "b" * 16: "sensitivity seed", "c" * 16: "default seed 0", "d" * 16: "oracle #3"}
    seed2 = {"a" * 16: 1.1, "b" * 16: 1.0, "c" * 16: 2.2, "d" * 16: 3.0}  # a second distillation, no other sets
    plans = [{"key": k, "role": roles[k], "kd": v[0], "proxy_kd": v[0]} for k, v in kd.items()]
    (tmp_path / "summary-30%.json").write_text(json.dumps({"budget": "30%", "plans": plans}))
    (tmp_path / "finals").mkdir()
    for key, (k0, k1, k2) in kd.items():
        final = {"key": key, "steps": 3, "kd": k0, "psnr": 30.0, "accuracy": None, "accuracy_se": None,
                 "seconds": 1.0, "seed": 1, "evals": {"1": k1, "2": k2}}  # fmt: skip
        (tmp_path / "finals" / f"{key}-3-seed1.json").write_text(json.dumps(final))
        final |= {"kd": seed2[key], "seed": 2, "evals": None}
        (tmp_path / "finals" / f"{key}-3-seed2.json").write_text(json.dumps(final))
    out = run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps",
              "3", "--report")  # fmt: skip
    # the best by the mean (a) loses to b at seed 2: picked on one seed and read on the other, the best plan is
    # no longer flattered by the noise that made it the best
    assert "regret of default seed 0: 2.00x on seed 1's finals, 2.000x on the means, 1.826x on a held-out seed" in out
    assert "the same students (distillation seed 1) on 3 held-out sets" in out
    assert "tau between sets 0-1: 1.00 over all" in out  # a common shift reorders nothing
    assert "tau between sets 0-2: 0.67 over all" in out  # the two best swapped
    evaluation = json.loads((tmp_path / "noise-30%.json").read_text())["evaluation"]["1"]
    assert evaluation["seed_plan"] == "b" * 16 and evaluation["set_shift"]["1"] > evaluation["set_shift"]["0"]
    assert evaluation["over_seed"]["a" * 16] == pytest.approx([1.0 / 1.2, 1.1 / 1.32, 1.3 / 1.0])
    assert evaluation["paired_sd"] > 0.05  # the swap is noise that reorders plans
    # plans no oracle study scored (a summary without proxy KDs, as the 20% one): the same report, no proxy taus
    unscored = [{k: v for k, v in p.items() if k != "proxy_kd"} for p in plans]
    (tmp_path / "summary-30%.json").write_text(json.dumps({"budget": "30%", "plans": unscored}))
    out = run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps",
              "3", "--report")  # fmt: skip
    assert "oracle's proxy KD" not in out and "1.826x on a held-out seed" in out
    # a printout ranked against these 3-step finals is filed as such, beside its rows against other finals
    printout = tmp_path / "proxy-fidelity-30-x.txt"
    printout.write_text(
        "4 plans at 30%, ranked after 1000 distillation steps\n"
        "final KD: aaaaaaaa 1.0, bbbbbbbb 1.2, cccccccc 2.0, dddddddd 3.0\n"
        "calibration held-out      lr steps schedule weights Kendall tau best half s / plan  scores\n"
        "        384      128   3e-04   300   cosine proxy          1.00      1.00     29.2  2.0, 1.0, 3.0, 4.0\n"
    )
    earlier = {"printout": printout.name, "variant": "v", "plans": 4, "tau_seed0": [0, 0], "tau_mean": [0, 0]}
    kept = [earlier | {"final_steps": 1000}, earlier | {"final_steps": 3}]
    (tmp_path / "noise-proxies.json").write_text(json.dumps(kept))
    run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps", "3",
        "--report", "--printouts", str(printout))  # fmt: skip
    rows = json.loads((tmp_path / "noise-proxies.json").read_text())
    variant = "300:cosine, lr 3e-04, proxy loss, 384 rows"
    assert [(r["final_steps"], r["variant"]) for r in rows] == [(1000, "v"), (3, variant)]
    assert rows[1]["tau_mean"][0] == pytest.approx(2 / 3)  # the scores swap a and b, the means do not


def test_final_noise_ranks_a_shorter_run_against_the_full_length_means(tmp_path: Path) -> None:
    """Fixed 3-step finals beside fixed 1000-step tables: the short run has the best plan behind the seed."""
    short = {"a" * 16: 1.3, "b" * 16: 1.2, "c" * 16: 2.0, "d" * 16: 3.0}
    full = {"a" * 16: 1.0, "b" * 16: 1.2, "c" * 16: 2.0, "d" * 16: 3.0}
    roles = {"a" * 16: ["oracle #1"], "b" * 16: ["sensitivity seed"], "c" * 16: ["oracle #2"], "d" * 16: ["oracle #3"]}
    plans = [{"key": k, "role": r[0], "steps": 1000, "kd": full[k]} for k, r in roles.items()]
    (tmp_path / "summary-30%.json").write_text(json.dumps({"budget": "30%", "plans": plans}))
    (tmp_path / "noise-30%.json").write_text(json.dumps({"seeds": [0, 1], "mean": full, "roles": roles}))
    (tmp_path / "finals").mkdir()
    for key, kd in short.items():
        for seed in (1, 2):
            final = {"key": key, "steps": 3, "kd": kd, "psnr": 30.0, "accuracy": None, "accuracy_se": None,
                     "seconds": 1.0, "seed": seed}  # fmt: skip
            (tmp_path / "finals" / f"{key}-3-seed{seed}.json").write_text(json.dumps(final))
    out = run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps",
              "3", "--report")  # fmt: skip
    assert "against the full-length means (4 plans, seeds [0, 1]): tau 0.67 over all, -1.00 over the better half" in out
    assert re.search(r"aaaaaaaa\s+-7\.7%\s+\+20\.0%", out)  # behind the seed at 3 steps, 20% ahead at 1000
    tables = json.loads((tmp_path / "noise-30%-3steps.json").read_text())["against_full_length"]
    assert tables["seed"] == "b" * 16 and tables["seed_lead"]["a" * 16] == pytest.approx([1.2 / 1.3 - 1, 0.2])
    assert json.loads((tmp_path / "noise-30%.json").read_text())["mean"] == full  # the full-length tables stay


def test_final_noise_counts_how_often_a_race_stopped_at_a_step_keeps_the_better_plan(tmp_path: Path) -> None:
    """Fixed finals and curves: at step 1 the curve has the best plan behind the seed, at step 2 in order."""
    kd = {"a" * 16: 1.0, "b" * 16: 1.2, "c" * 16: 2.0, "d" * 16: 3.0}  # every pair at least 5% apart
    roles = {"a" * 16: "oracle #1", "b" * 16: "sensitivity seed", "c" * 16: "default seed 0", "d" * 16: "oracle #3"}
    early = {"a" * 16: 1.3, "b" * 16: 1.2, "c" * 16: 2.0, "d" * 16: 3.0}
    plans = [{"key": k, "role": roles[k], "kd": v, "proxy_kd": v} for k, v in kd.items()]
    (tmp_path / "summary-30%.json").write_text(json.dumps({"budget": "30%", "plans": plans}))
    (tmp_path / "finals").mkdir()
    for key, final_kd in kd.items():
        for seed in (1, 2):
            curve = [[1, early[key]], [2, final_kd]] if seed == 1 else None  # one seed kept its curve
            final = {"key": key, "steps": 3, "kd": final_kd, "psnr": 30.0, "accuracy": None, "accuracy_se": None,
                     "seconds": 1.0, "seed": seed, "curve": curve}  # fmt: skip
            (tmp_path / "finals" / f"{key}-3-seed{seed}.json").write_text(json.dumps(final))
    out = run("benchmarks/final_noise.py", str(tmp_path / "summary-30%.json"), "--seeds", "1,2", "--final-steps",
              "3", "--report")  # fmt: skip
    assert "step     1: against this run's final 0.67 / -1.00" in out
    assert "the race 5 of 6 (against the seed 2 of 3)" in out  # stopped at step 1: the seed over the best plan
    assert "the race 6 of 6 (against the seed 3 of 3)" in out
    early_rows = json.loads((tmp_path / "noise-30%.json").read_text())["early"]["1"]
    assert early_rows["1"][4:] == [5, 6, 2, 3] and early_rows["2"][4:] == [6, 6, 3, 3]


def test_seed_variants_writes_the_sensitivity_seed_and_its_variants_for_final_noise(tmp_path: Path) -> None:
    from pruner.cost import CostModel
    from pruner.recipe import load_recipe
    from pruner.study.heuristics import emptied_modules
    from pruner.unet import Plan, architecture_config, meta_unet, topology_of

    run("benchmarks/seed_variants.py", "--budgets", "50%", "--calibration", "8", "--held-out", "8",
        "--out", str(tmp_path))  # fmt: skip
    summary = json.loads((tmp_path / "summary-50%.json").read_text())
    roles = {p["role"]: p["key"] for p in summary["plans"]}
    assert set(roles) == {"sensitivity seed", "unemptied seed", "refilled seed"} and summary["budget"] == "50%"
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    plans = {role: load_recipe(tmp_path / "plans" / f"{key}.yaml").plan_obj() for role, key in roles.items()}
    assert not emptied_modules(plans["unemptied seed"], topo, lambda _n: True)
    emptied = emptied_modules(plans["sensitivity seed"], topo, lambda _n: True)
    back = plans["sensitivity seed"].removed - plans["refilled seed"].removed
    assert len(back) == 1 and any(back <= set(layers) for layers in emptied.values())  # one layer refills one
    cost = CostModel(architecture_config("tiny-sdxl"))
    assert all(cost.params(plan) <= 0.5 * cost.params(Plan()) for plan in plans.values())


def test_search_vs_heuristics_distils_the_refill_beside_the_sensitivity_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import search_vs_heuristics

    def trial(removed: list[str], kd: float, label: str | None = None) -> optuna.trial.FrozenTrial:
        attrs: dict[str, object] = {"removed": removed, "ff_keep": {}, "label": label, "proxy_kd": kd,
                                    "rung_steps": 100}  # fmt: skip
        return create_trial(state=TrialState.COMPLETE, values=[kd, 1.0], user_attrs=attrs)

    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trials([trial(["a"], 0.10, "sensitivity-refilled"), trial(["b"], 0.12, "sensitivity"),
                      trial(["c"], 0.50, "ssd"), trial(["d"], 0.09), trial(["e"], 0.11)])  # fmt: skip
    roles = [(role, t.number) for role, t in search_vs_heuristics.chosen(study, extra=1)]
    # found (no recorded choice: the best proxy), both one-shot seeds, the best hand style, the next sampled plan
    assert roles == [("found", 3), ("sensitivity", 1), ("sensitivity-refilled", 0), ("hand:ssd", 2), ("searched", 4)]


def test_search_oracle_packs_a_journal_only_once_no_other_worker_of_its_search_is_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import search_oracle

    (tmp_path / "s.log").write_text("the journal")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    for pid in (gone.pid, other.pid):
        (tmp_path / f"s.worker.{pid}").touch()
    assert search_oracle.live_workers("s", tmp_path) == [other.pid]
    assert not (tmp_path / f"s.worker.{gone.pid}").exists()  # a crashed worker's marker holds nobody up

    def end_the_other() -> None:
        other.terminate()
        other.wait()

    threading.Timer(1.0, end_the_other).start()
    search_oracle.wait_for_workers("s", tmp_path, poll_s=0.05)
    assert other.poll() is not None  # it returned only once the other worker was gone
    search_oracle.pack("s", tmp_path)
    search_oracle.pack("s", tmp_path)  # a second worker finding it packed leaves it be
    assert gzip.decompress((tmp_path / "s.log.gz").read_bytes()) == b"the journal"
    assert [p.name for p in tmp_path.iterdir()] == ["s.log.gz"]  # the ended worker's marker went with it


def test_plan_classes_counts_the_trials_of_the_oracles_class_in_a_gzipped_journal(tmp_path: Path) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    plans = [
        ["mid_block", "down_blocks.2.resnets.1", "up_blocks.0.attentions.1.transformer_blocks.0"],  # the class
        ["mid_block", "down_blocks.2.resnets.1", "down_blocks.1.resnets.1"],  # two ResNets: not
        ["mid_block.attentions.0", "down_blocks.2.resnets.0"],  # the mid attention only: not
        ["down_blocks.2.resnets.0", "mid_block"],  # the class again
    ]
    journal = tmp_path / "s.log"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    for i, removed in enumerate(plans):
        trial = study.ask()
        trial.set_user_attr("removed", removed)
        trial.set_user_attr("origin", f"mutation {i}")
        trial.set_user_attr("proxy_kd", 0.001 * (i + 1))
        study.tell(trial, 0.001 * (i + 1))
    (tmp_path / "s.log.gz").write_bytes(gzip.compress(journal.read_bytes()))
    out = run("benchmarks/plan_classes.py", str(tmp_path / "s.log.gz"))
    row = next(line for line in out.splitlines() if line.startswith("s.log.gz"))
    assert row.split()[1:4] == ["s", "4", "2"] and "0 (mutation 0, 0.00100), 3 (mutation 3, 0.00400)" in row
    two = run("benchmarks/plan_classes.py", str(journal), "--resnets", "2", "--resnet-prefix", "down_blocks.")
    assert next(line for line in two.splitlines() if line.startswith("s.log")).split()[1:4] == ["s", "4", "1"]


def test_final_noise_reads_both_kinds_of_proxy_fidelity_printout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variants printout (with the loss-weights column) and an --orders printout give each row's label and
    the plans' scores in the printout's order."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import final_noise

    head = "2 plans at 30%, ranked after 1000 distillation steps\nfinal KD: aaaaaaaa 0.00043, bbbbbbbb 0.00047\n"
    variants = tmp_path / "variants.txt"
    variants.write_text(
        head + "calibration held-out      lr steps schedule weights Kendall tau best half s / plan  scores\n"
        "        384      128   3e-04   300   cosine distill        0.06     -1.00     29.2  0.00207, 0.00222\n"
    )
    orders = tmp_path / "orders.txt"
    orders.write_text(
        head + "top steps orders tau all tau best half s / plan order SD  scores\n"
        "      300      2    0.33         -0.67     66.1      4%  0.00070, 0.00073\n"
        "each order's score at 300 steps: 0.00072 0.00069; 0.00073 0.00072\n"
    )
    assert final_noise.printout(variants) == (
        "30%",
        ["aaaaaaaa", "bbbbbbbb"],
        [("300:cosine, lr 3e-04, distill loss, 384 rows", [0.00207, 0.00222])],
    )
    assert final_noise.printout(orders)[2] == [("300 steps, 2 order(s)", [0.00070, 0.00073])]


def test_found_rule_confirms_named_trials_against_the_seed_under_the_confirmations_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``found_rule.py --trials``: each named trial and the seed are trained the confirmation's steps under its
    row orders (on its rows), and each trial's lead over the seed is paired over those orders, as a share."""
    from types import SimpleNamespace

    import optuna
    from optuna.trial import TrialState, create_trial

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import found_rule

    from pruner.study.study import SearchConfig

    def trial(removed: list[str], label: str | None = None) -> optuna.trial.FrozenTrial:
        attrs: dict[str, object] = {"removed": removed, "ff_keep": {}, "label": label,
                                    "plan_key": "+".join(removed) or "none"}  # fmt: skip
        return create_trial(state=TrialState.COMPLETE, values=[1.0, 1.0], user_attrs=attrs)

    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trials([trial(["mid_block"], "sensitivity"), trial(["a"]), trial(["b"])])
    cfg = SearchConfig(progress=False, noise_seeds=2, seed=5, confirm_calibration=384)
    asked: dict[str, int] = {}

    def with_calibration(rows: int) -> SimpleNamespace:
        asked["rows"] = rows
        return SimpleNamespace(cfg=cfg, calib=SimpleNamespace(device="cpu", n_train=rows))

    ctx = SimpleNamespace(cfg=cfg, with_calibration=with_calibration)
    monkeypatch.setattr(found_rule, "context_of", lambda *_a, **_k: ctx)
    seed_kd = {6: 1.00, 7: 1.10, 8: 0.90}  # by row order: the confirmation's are seed + 1 .. seed + 3
    trained: list[tuple[str, int, int]] = []

    def straight_kd(_ctx: object, plan: object, order: int, steps: int) -> float:
        name = "+".join(sorted(plan.removed))  # type: ignore[attr-defined]
        trained.append((name, order, steps))
        return seed_kd[order] * {"mid_block": 1.0, "a": 0.8, "b": 1.02}[name]

    from pruner.study import choice

    monkeypatch.setattr(choice, "straight_kd", straight_kd)
    monkeypatch.setattr(choice, "repeat_workers", lambda *_a: 1)
    monkeypatch.setattr(choice, "repeat_room", lambda *_a: None)  # in this process: ``trained`` sees them
    out = found_rule.confirm_trials(study, "30%", [1, 2], 1000, 384)
    assert asked["rows"] == 384 and out["rows"] == 384 and out["steps"] == 1000
    assert sorted(trained) == sorted((n, o, 1000) for n in ("mid_block", "a", "b") for o in (6, 7, 8))
    assert out["seed"] == 0 and out["seed_kd"] == pytest.approx([1.00, 1.10, 0.90])
    assert out["trials"]["1"]["lead"] == pytest.approx(0.2)
    assert out["trials"]["1"]["se"] == pytest.approx(0.02 / 3**0.5)
    assert out["trials"]["2"]["lead"] == pytest.approx(-0.02)


def test_found_rule_keeps_the_decision_as_json_and_names_a_missing_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``found_rule.py --json PATH`` writes what it prints in the kept decisions' form (the seconds under
    ``seconds``), whole or not at all; a study the storage lacks is named in one line, exit 2, nothing written."""
    import optuna

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import found_rule

    journal = tmp_path / "s.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="s-30%", storage=storage, directions=["minimize", "minimize"])
    floor, made = {"trial": 3, "kd": [1.0, 1.1]}, {"chosen": 0, "reason": "the sensitivity seed scored best"}
    monkeypatch.setattr(found_rule, "decide_again", lambda *_a, **_k: (floor, made, 8.2, 411.4))
    out = tmp_path / "decided.json"
    monkeypatch.setattr("sys.argv", ["found_rule.py", f"journal:{journal}", "s-30%", "--budget", "30%",
                                     "--json", str(out)])  # fmt: skip
    found_rule.main()
    kept = json.loads(out.read_text())
    assert kept == {"noise_floor": floor, "found_choice": made, "seconds": "noise floor 8 s, the decision 411 s"}
    assert capsys.readouterr().out.rstrip().endswith("noise floor 8 s, the decision 411 s")

    missing = tmp_path / "missing.json"
    monkeypatch.setattr("sys.argv", ["found_rule.py", f"journal:{journal}", "other", "--budget", "30%",
                                     "--json", str(missing)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        found_rule.main()
    assert exit_.value.code == 2 and not missing.exists()
    err = capsys.readouterr().err
    assert "no study 'other'" in err and "it holds s-30%" in err


def test_confirm_vs_final_reads_each_decisions_leads_as_shares_of_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored decision's confirmation and runners-up hold leads in KD (divided by the seed's mean there), a
    ``--trials`` reading holds shares already; each plan's final lead comes from the means through its key."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import confirm_vs_final

    trials = [SimpleNamespace(number=n, user_attrs={"plan_key": f"plan{n}"}) for n in range(4)]
    monkeypatch.setattr(confirm_vs_final, "study_of", lambda _search: SimpleNamespace(trials=trials))
    finals = {"plan1": 0.05, "plan2": -0.09}
    monkeypatch.setattr(confirm_vs_final, "final_lead", lambda budget, key, seed: finals.get(key))
    decided = tmp_path / "decided-runners-up-default-30%-seed0.json"
    confirm = {"lead": 0.0001, "se": 0.00002, "seed_kd": [0.001, 0.001, 0.001]}
    runners = {"seed_kd": [0.002, 0.002, 0.002], "trials": [{"trial": 2, "lead": 0.0002, "se": None}]}
    decided.write_text(json.dumps({"found_choice": {"seed": 0, "candidate": 1, "confirm": confirm,
                                                    "runners_up": runners}}))  # fmt: skip
    read = tmp_path / "runners-up-default-30%-seed3.json"
    read.write_text(json.dumps({"seed": 0, "seed_kd": [0.002], "trials": {"3": {"lead": 0.26, "se": 0.025}}}))
    got = confirm_vs_final.confirmed_in(decided) + confirm_vs_final.confirmed_in(read)
    assert [(c.trial, c.budget, c.final) for c in got] == [(1, "30%", 0.05), (2, "30%", -0.09), (3, "30%", None)]
    assert [c.lead for c in got] == pytest.approx([0.1, 0.1, 0.26])
    assert [c.se for c in got] == pytest.approx([0.02, 0.0, 0.025])
    assert got[0].search == "default-30%-seed0" and got[2].search == "default-30%-seed3"


def test_search_oracle_table_keeps_the_budgets_an_earlier_run_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import search_oracle

    (tmp_path / "summary-50%.json").write_text(json.dumps({"table": "### 50%\n\n| plan |"}))  # an older run's
    (tmp_path / "summary-30%.json").write_text(json.dumps({"table": "### 30%\n\n| seed |", "command": "`run b`"}))
    (tmp_path / "table.md").write_text("### 30%\n\nonly the last run's budget")
    table = search_oracle.write_table(tmp_path).read_text()
    assert table.index("`run b`") < table.index("### 30%") < table.index("### 50%")  # each under what made it
    assert "| plan |" in table and "only the last run's budget" not in table


def test_proxy_rows_ranks_each_quarter_of_the_timesteps_and_reads_leads_over_the_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fixed per-row scores: the quarters split the rows by timestep, each ranked on its own rows; a lead is one
    minus a plan's score over the seed's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import proxy_rows

    timesteps = [10, 20, 300, 310, 600, 610, 900, 910]
    assert proxy_rows.quarter_bins(timesteps) == [(-1, 20), (20, 310), (310, 610), (610, 910)]
    final = {"best": 1.0, "seed": 2.0, "worst": 3.0}
    per_row = {  # "best" reads worse than the seed at low timesteps, better at high ones
        "best": [3.5, 3.5, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        "seed": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
        "worst": [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],
    }
    lines = proxy_rows.rank_table(per_row, timesteps, final, "seed", "rows")
    assert lines[0] == "rows: 3 plans, in the order they end: best seed worst"
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    assert rows["all rows"] == ["1.00", "1.00", "+6%", "seed", "-50%"]  # 1.875 against 2.0
    assert rows["t in (-1, 20]"][:3] == ["-0.33", "-1.00", "-75%"]  # best reads worst there: 3.5 against 2
    assert rows["t in (610, 910]"][:3] == ["1.00", "1.00", "+50%"]
    unranked = proxy_rows.rank_table(per_row, timesteps, {"best": 1.0, "worst": 3.0}, "seed", "rows")
    assert unranked[2].split()[-2:] == ["-", "-"]  # a seed with no final: its plans ranked, no lead read


def test_proxy_rows_names_a_plan_on_both_kinds_of_rows_only_when_its_lead_carries_on_each() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import proxy_rows

    per_row = {  # each plan's per-row KD under three orders; the seed's differ by order
        "held-out rows": {
            "seed": [[1.0, 1.0], [1.1, 1.1], [0.9, 0.9]],
            "both": [[0.8, 0.8], [0.85, 0.85], [0.75, 0.75]],  # +20%, steady
            "one": [[0.85, 0.85], [0.95, 0.95], [0.8, 0.8]],  # +13%, steady
            "noise": [[0.8, 0.8], [1.2, 1.2], [1.0, 1.0]],  # level on the mean, +-20% by order
        },
        "teacher samples": {
            "seed": [[2.0], [2.0], [2.1]],
            "both": [[1.6], [1.7], [1.7]],  # +18%
            "one": [[2.0], [1.95], [2.05]],  # +2%: under the 8%
            "noise": [[1.5], [2.4], [2.0]],
        },
    }
    kept = {"orders": [1, 2, 3], "per_row": per_row}
    final = {"seed": 1.0, "both": 0.9, "one": 1.02, "noise": 1.05}
    lines = proxy_rows.rule_table(kept, final, "seed", 0.08)
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["both", "one", "noise"]  # in the order they end
    assert rows["both"].split()[1] == "+10.0%" and rows["both"].endswith("both")
    assert rows["one"].endswith("held-out rows") and "+13.3% ± 1.7%*" in rows["one"]
    assert rows["noise"].endswith("-")  # a level mean: never named, however large an order's lead
    assert proxy_rows.rule_table(kept, final, "seed", 0.25)[2].endswith("-")  # the bar is the share asked
    assert proxy_rows.rule_table(kept, {"both": 0.9}, "seed", 0.08) == []  # no final for the seed: nothing read
    per_row["held-out rows"]["one"] = per_row["held-out rows"]["one"][:2]  # a run stopped before its third order
    assert [line.split()[0] for line in proxy_rows.rule_table(kept, final, "seed", 0.08)[2:]] == ["both", "noise"]


@pytest.mark.slow
def test_proxy_rows_scores_each_plan_on_held_out_rows_and_on_teacher_samples(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "results" / "search_oracle"
    keys = ["a0197189548be7c5", "99df6c245bf1b67a"]  # the 30% sensitivity seed and the oracle's best
    (tmp_path / "plans").mkdir()
    for key in keys:
        (tmp_path / "plans" / f"{key}.yaml").write_bytes((results / "plans" / f"{key}.yaml").read_bytes())
    summary = json.loads((results / "summary-30%.json").read_text())
    summary["plans"] = [p for p in summary["plans"] if p["key"] in keys]
    (tmp_path / "summary-30%.json").write_text(json.dumps(summary))
    out = run("benchmarks/proxy_rows.py", str(tmp_path / "summary-30%.json"), "--steps", "1", "--samples", "4",
              "--json", str(tmp_path / "rows.json"))  # fmt: skip
    assert "final KD: distillation seed 0" in out  # no noise-30%.json beside: the summary's own finals
    assert "held-out rows: 2 plans, in the order they end: 99df6c24 a0197189" in out
    assert "teacher samples: 2 plans" in out and out.count("t in (") == 8
    kept = json.loads((tmp_path / "rows.json").read_text())
    assert len(kept["timesteps"]["teacher samples"]) == 4
    assert {k: len(v[0]) for k, v in kept["per_row"]["teacher samples"].items()} == dict.fromkeys(keys, 4)
    assert len(kept["per_row"]["held-out rows"][keys[0]][0]) == len(kept["timesteps"]["held-out rows"])
    again = run("benchmarks/proxy_rows.py", str(tmp_path / "summary-30%.json"), "--report", str(tmp_path / "rows.json"),
                str(tmp_path / "rows.json"))  # fmt: skip
    assert "averaged over orders [1, 1]" in again  # two runs' orders together, nothing trained

    def tables(printout: str) -> list[str]:
        return printout.split("averaged over orders")[1].split("the rule's lead")[0].splitlines()[1:]

    assert tables(again) == tables(out)
    assert "the rule's lead over the seed (a0197189), paired over orders [1]" in out
    assert out.rstrip().splitlines()[-1].startswith("99df6c24")  # one order: no error measured, nothing named
    assert out.rstrip().endswith("-")
    kept["steps"] = 2
    (tmp_path / "other.json").write_text(json.dumps(kept))
    reports = [str(tmp_path / "rows.json"), str(tmp_path / "other.json")]
    script = [sys.executable, "benchmarks/proxy_rows.py", str(tmp_path / "summary-30%.json"), "--report", *reports]
    refused = subprocess.run(script, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "trained or scored otherwise" in refused.stderr
    first, second = dict.fromkeys(p["key"] for p in summary["plans"])
    (tmp_path / "plans" / f"{second}.yaml").unlink()  # the run stops at the second plan
    script = [sys.executable, "benchmarks/proxy_rows.py", str(tmp_path / "summary-30%.json"), "--steps", "1",
              "--samples", "4", "--json", str(tmp_path / "part.json")]  # fmt: skip
    stopped = subprocess.run(script, cwd=ROOT, capture_output=True, text=True)
    assert stopped.returncode != 0
    assert list(json.loads((tmp_path / "part.json").read_text())["per_row"]["held-out rows"]) == [first]
