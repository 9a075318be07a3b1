"""The whole user path at full SDXL size, as a user runs it: random weights, real shapes, the CLI.

Builds a StableDiffusionXLPipeline folder of random weights at SDXL's sizes (the UNet from pruner's sdxl
config, SDXL's VAE, both CLIP text encoders at CLIP-L / bigG widths, an offline tokenizer over the
shape-caption vocabulary), writes captioned pictures at 1024, then runs, each in its own process:

    pruner synth-data -> pruner cache -> pruner search --budget 0.74B -> pruner distill found.yaml -> pruner eval

and prints, per stage: wall time, peak GPU memory, peak host memory (and seconds per search trial,
calibration included).

    python benchmarks/sdxl_scale.py                        # one GPU (H100/H200 class): small settings
    python benchmarks/sdxl_scale.py --trials 64 --proxy-steps 30 --images 256 --calibration 96 --held-out 128
    python benchmarks/sdxl_scale.py --size 512 --calibration 32 --held-out 32    # the 24 GB setting
    python benchmarks/sdxl_scale.py --tiny                 # the same path at the bundled teacher's size, CPU
    python benchmarks/sdxl_scale.py --width 0.5 --size 256 --budget 28% --device cpu ...   # SDXL's depths, CPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "pruner" / "tiny" / "teacher"
SDXL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
    "scaling_factor": 0.13025, "force_upcast": True,
}  # fmt: skip
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip


def _text_encoders(vocab: int, tiny: bool):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pruner.tiny.text import build_text_encoders

    if tiny:
        return build_text_encoders(vocab, seed=0)
    ids = {"vocab_size": vocab, "max_position_embeddings": 77, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
           "pad_token_id": vocab - 1}  # fmt: skip
    first = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, **ids))
    return first.eval(), second.eval()


def _tokenizer(folder: Path, tiny: bool):  # type: ignore[no-untyped-def]
    from transformers import CLIPTokenizer

    from pruner.tiny.text import build_tokenizer

    tok = build_tokenizer(folder)
    if tiny:
        return tok
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")  # fmt: skip


def unet_config(tiny: bool, width: float = 1.0) -> dict:  # type: ignore[type-arg]
    """SDXL's UNet config (the bundled teacher's with ``tiny``); ``width`` scales its channels and keeps all
    else (depths, heads, the 2048-wide text conditioning): 0.5 is a quarter of the parameters, small enough
    to rehearse the full-size path on a CPU."""
    from pruner.unet import architecture_config

    config = dict(architecture_config("tiny-sdxl" if tiny else "sdxl"))
    if width != 1.0:
        channels = [int(c * width) for c in config["block_out_channels"]]
        heads = config["attention_head_dim"]
        if any(c % 32 or c % h for c, h in zip(channels, heads, strict=True)):
            sys.exit(f"--width {width}: channels {channels} must divide into 32 groups and {heads} heads (try 0.5)")
        config["block_out_channels"] = channels
    return config


def build_pipeline(folder: Path, tiny: bool, width: float = 1.0) -> Path:
    """A StableDiffusionXLPipeline of random weights (fp16 files at SDXL size) saved to ``folder``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tok = _tokenizer(Path(tmp) / "tok", tiny)
        first, second = _text_encoders(len(tok.get_vocab()), tiny)
        vae_cfg = AutoencoderKL.load_config(BUNDLED / "vae") if tiny else SDXL_VAE
        unet = UNet2DConditionModel.from_config(unet_config(tiny, width))
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL.from_config(vae_cfg), text_encoder=first, text_encoder_2=second, tokenizer=tok,
            tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(BUNDLED / "scheduler"),
        )  # fmt: skip
        if not tiny:
            pipe.to(torch.float16)  # half the bytes to write and read; pruner loads what it needs in fp32
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def run_stage(out: Path, args: list[str]) -> None:
    """Child process: run one CLI command in-process, then record its peak memory beside the exit code."""
    import runpy

    sys.argv = ["pruner", *args]
    try:  # `python -m pruner ...`, as a user runs it
        runpy.run_module("pruner", run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    out.write_text(json.dumps({"code": code, "gpu": gpu, "host": peak_host_bytes()}))


def peak_host_bytes() -> int:
    """This process's peak resident memory since it started its program: VmHWM, which starts afresh at exec
    (ru_maxrss keeps the forking parent's resident set, the whole benchmark's, so it over-counts a stage)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: an upper bound


def stage(name: str, args: list[str], work: Path, rows: list[dict]) -> dict:  # type: ignore[type-arg]
    """Run ``pruner ARGS`` in a fresh process, its output kept in ``work/NAME.log``; print the stage's row as
    soon as it ends (a run stopped by a time limit still shows the stages it finished); a failing stage stops
    the benchmark with the end of its output."""
    record, log = work / f"{name}.json", work / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, __file__, "--run-stage", str(record), "--", *args], cwd=work,
                              stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not record.is_file() or json.loads(record.read_text())["code"] != 0:
        sys.exit(f"stage {name} failed: pruner {' '.join(args)}\n{log.read_text()[-6000:]}")
    row = {"stage": name, "wall_s": wall, **json.loads(record.read_text())}
    rows.append(row)
    print(f"{name}: {wall:.1f} s, peak GPU {row['gpu'] / 2**30:.2f} GiB, peak host {row['host'] / 2**30:.2f} GiB",
          flush=True)  # fmt: skip
    return row


def trial_times(storage: Path) -> str:
    """Seconds per trial from the study, by the rung the trial reached (zero-shot, proxy steps, top steps)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storage}")
    by_rung: dict[int, list[float]] = {}
    for t in study.trials:
        if t.datetime_start and t.datetime_complete and not t.user_attrs.get("skipped"):
            steps = int(t.user_attrs.get("rung_steps") or 0)
            by_rung.setdefault(steps, []).append((t.datetime_complete - t.datetime_start).total_seconds())
    parts = [f"{len(v)} trials to {k} steps: median {statistics.median(v):.1f} s" for k, v in sorted(by_rung.items())]
    return "trials: " + "; ".join(parts)


def _plan(args: argparse.Namespace) -> dict[str, str]:
    """The sizes each stage runs at (tiny: the bundled teacher's scale, a few seconds a stage)."""
    if args.tiny:
        return {"images": "24", "size": "32", "budget": "50%", "trials": "2", "proxy": "1", "calibration": "8",
                "held_out": "8", "steps": "2", "eval_n": "2", "eval_steps": "2"}  # fmt: skip
    return {"images": str(args.images), "size": str(args.size), "budget": args.budget, "trials": str(args.trials),
            "proxy": str(args.proxy_steps), "calibration": str(args.calibration), "held_out": str(args.held_out),
            "steps": str(args.steps), "eval_n": str(args.eval_n), "eval_steps": str(args.eval_steps)}  # fmt: skip


def run(args: argparse.Namespace, work: Path) -> list[dict]:  # type: ignore[type-arg]
    p, rows = _plan(args), []
    teacher = work / "teacher"
    start = time.perf_counter()
    build_pipeline(teacher, args.tiny, args.width)
    rows.append({"stage": "build pipeline", "wall_s": time.perf_counter() - start, "gpu": 0, "host": 0})
    stage("synth-data", ["synth-data", "--out", "images", "--n", p["images"], "--size", p["size"]], work, rows)
    captions = [json.loads(x)["text"] for x in (work / "images" / "metadata.jsonl").read_text().splitlines()]
    (work / "prompts.txt").write_text("\n".join(captions[-8:]) + "\n")
    stage("cache", ["cache", "images", "--teacher", "teacher", "--out", "cache", "--batch-size", "4", "--resolution",
                    p["size"]], work, rows)  # fmt: skip
    device = ["--device", args.device] if args.device else []
    search = stage("search", ["search", "--teacher", "teacher", "--data", "cache", "--budget", p["budget"],
                              "--trials", p["trials"], "--proxy-steps", p["proxy"], "--calibration", p["calibration"],
                              "--held-out", p["held_out"], "--storage", "sqlite:///study.db", "--out", "recipes",
                              *device], work, rows)  # fmt: skip
    search["per_trial_s"] = search["wall_s"] / int(p["trials"])
    plan_line = [x for x in (work / "search.log").read_text().splitlines() if "calibration:" in x]
    print(*plan_line[:1], trial_times(work / "study.db"), sep="\n", flush=True)
    on_gpu = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    half = (["--mixed-precision", "bf16"] if on_gpu else []) + ([] if args.tiny else ["--gradient-checkpointing"])
    stage("distill", ["distill", "recipes/found.yaml", "--data", "cache", "--steps", p["steps"], "--batch-size", "1",
                      "--output", "student", *half], work, rows)  # fmt: skip
    stage("eval", ["eval", "student", "--teacher", "teacher", "--prompts", "prompts.txt", "--n", p["eval_n"],
                   "--steps", p["eval_steps"], "--grid", "eval.png", "--resolution", p["size"]],
          work, rows)  # fmt: skip
    return rows


def against_vega(work: Path, tiny: bool, size: int, device_name: str | None = None) -> str:
    """UNet latency of the found recipe's student and of Segmind-Vega's plan applied to the same teacher, for
    ``size`` pixel pictures, batch 2 (one picture with guidance), in the teacher's dtype on the search's device."""
    from pruner.cost.latency import measure_latency
    from pruner.device import resolve_device, teacher_dtype
    from pruner.recipe import load_recipe
    from pruner.teacher import Teacher
    from pruner.unet import build_student

    device = resolve_device(device_name)
    resolved = Teacher.resolve(str(work / "teacher"))
    teacher = resolved.load(dtype=teacher_dtype(device), device=device)
    vega = ROOT / "recipes" / ("tiny-sdxl-vega.yaml" if tiny else "sdxl-vega.yaml")
    latent = size // resolved.vae_scale
    parts = []
    for name, recipe in (("found", work / "recipes" / "found.yaml"), ("vega", vega)):
        student, _ = build_student(teacher, load_recipe(recipe).plan_obj())
        ms = measure_latency(student, latent, batch=2, runs=10).total_ms
        params = sum(p.numel() for p in student.parameters())
        parts.append(f"{name} {params / 1e6:.1f}M params, {ms:.1f} ms")
        del student
    return f"UNet latency at {latent}x{latent} latents, batch 2, {teacher.dtype}: " + "; ".join(parts)


def print_table(rows: list[dict], title: str) -> None:  # type: ignore[type-arg]
    print(title)
    print(f"{'stage':<16}{'wall s':>9}{'peak GPU GiB':>14}{'peak host GiB':>15}{'s / trial':>11}")
    for r in rows:
        per = f"{r['per_trial_s']:.1f}" if "per_trial_s" in r else "-"
        print(f"{r['stage']:<16}{r['wall_s']:>9.1f}{r['gpu'] / 2**30:>14.2f}{r['host'] / 2**30:>15.2f}{per:>11}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--run-stage":
        return run_stage(Path(sys.argv[2]), sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the bundled teacher's size, on the CPU (the tested path)")
    p.add_argument("--work", type=Path, default=None, help="folder to keep (default: a temporary one)")
    p.add_argument("--device", default=None, help="search device (default: cuda when available)")
    p.add_argument("--budget", default="0.74B", help="with --width: a share, e.g. 28%% (0.74B of SDXL's 2.6B)")
    p.add_argument("--width", type=float, default=1.0, help="scale the UNet's channels (0.5: rehearse on a CPU)")
    p.add_argument("--images", type=int, default=72, help="captioned pictures synthesised at --size")
    p.add_argument("--size", type=int, default=1024, help="picture side for data, cache and eval (512: a 24 GB card)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--proxy-steps", type=int, default=30)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--held-out", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="distill steps")
    p.add_argument("--eval-n", type=int, default=4, help="eval prompts")
    p.add_argument("--eval-steps", type=int, default=10, help="eval sampling steps")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(args, work)
        print(against_vega(work, args.tiny, int(_plan(args)["size"]), args.device), flush=True)
    where = "CPU" if args.tiny or not torch.cuda.is_available() else torch.cuda.get_device_name()
    narrow = f", channels x{args.width}" if args.width != 1.0 else ""
    size = "tiny-sdxl size" if args.tiny else f"SDXL size (random weights{narrow}), {args.size}px"
    print_table(rows, f"{size} on {where}")
    return None


if __name__ == "__main__":
    main()
