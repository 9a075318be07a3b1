"""``pruner eval``: how close a student is to its teacher, and how fast both are.

- Held-out denoising KD loss: MSE between student and teacher noise predictions on the same noisy
  latents, timesteps and prompts (clean latents are the teacher's own generations for the prompts, so
  any pipeline works without a dataset).
- Teacher agreement: pictures generated from the same seeds by both (PSNR in dB; identical pictures
  report the cap, 100 dB), and the judge's prompt accuracy when the teacher is the bundled one, with its
  binomial standard error (a share of n prompts: on 256 prompts near 90%, about 1.9 points).
- Prompts: from a file, or for the bundled teacher captions held out from its data set: drawn from their
  own random stream, skipping every caption of the bundled set (``pruner.data.bundled.bundled_captions``)
  that distillation trains on, its latent cache encodes and the search calibrates on. That set holds
  every one-object caption (216), so the held-out prompts are all two-object scenes; and the teacher's
  own 40,000 training scenes hold nearly every caption the grammar makes: the prompts are new to the
  student, not to the teacher.
- UNet latency of both, measured in the same run (a classifier-free-guidance batch of 2), in the dtype both
  run in: by default the teacher's frozen dtype on the device (bf16 on a GPU, as users deploy SDXL; fp32 on
  a CPU), so a GPU figure is the latency a user gets, not fp32's.
- A PNG grid: teacher row above student row, one column per prompt.
- On request (``metrics=``), the field's metrics by torchmetrics (:mod:`pruner.metrics`): FID and KID of the
  student's pictures against the teacher's (or a reference set: a folder of pictures, a ``datasets`` set or tar
  shards), the CLIP score and preference scores of both; their models are loaded before any picture is made,
  and what scored is recorded beside the scores.

The prompts go a batch at a time: each batch's pictures are scored (PSNR, the judge, the metrics' running
states), written when kept (``keep_pictures``) and dropped, so memory does not grow with the number of prompts.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from PIL import Image

from pruner import defaults
from pruner.cost.latency import measure_latency
from pruner.diffusion import conditioning, generate, image_grid
from pruner.errors import PrunerError
from pruner.io import read_prompts
from pruner.metrics.scoring import MetricOptions, ScoreStream, load_scorers
from pruner.teacher import Teacher
from pruner.unet.load import ModelRef, load_unet

__all__ = [
    "DTYPES",
    "PSNR_CAP",
    "EvalReport",
    "FirstPictures",
    "PictureKeeper",
    "binomial_se",
    "check_fits",
    "decode_pictures",
    "eval_dtype",
    "eval_prompts",
    "evaluate_student",
    "kept_pictures",
    "load_student_unet",
]

PSNR_CAP = 100.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalReport:
    """What ``pruner eval`` prints (``--json`` prints ``as_dict``); accuracies and their standard errors are
    shares (0..1), None without a judge. The fields added later (standard errors, resolution) come last,
    so positional use stays valid."""

    student: str
    teacher: str
    kd_loss: float
    psnr: float
    prompt_accuracy: float | None
    teacher_prompt_accuracy: float | None
    student_latency_ms: float
    teacher_latency_ms: float
    student_params: int
    teacher_params: int
    n_prompts: int
    steps: int
    guidance_scale: float
    grid: str | None
    prompt_accuracy_se: float | None = None
    teacher_prompt_accuracy_se: float | None = None
    resolution: int | None = None  # pixels a side of the pictures and of the latency inputs
    dtype: str | None = None  # what both UNets (and the pipeline) ran in: float32, bfloat16 or float16
    metrics: dict[str, float] = field(default_factory=dict)  # fid, kid, kid_std, clip_score ... as asked
    metric_settings: dict[str, Any] = field(default_factory=dict)  # which features, reference and models scored
    seed: int | None = None  # picture k drew from seed + k
    prompts_file: str | None = None  # None: the bundled teacher's held-out captions

    def protocol(self) -> dict[str, Any]:
        """The settings the numbers were measured under, what a reader needs to measure them again: the
        prompts, how many, resolution, steps, guidance, seed, dtype, and each field metric's reference and model."""
        prompts = self.prompts_file or f"{self.teacher}'s held-out captions"
        return {"prompts": prompts, "n": self.n_prompts, "resolution": self.resolution, "steps": self.steps,
                "guidance": self.guidance_scale, "seed": self.seed, "dtype": self.dtype,
                **self.metric_settings}  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """Every field, and the protocol beside them (``--json``; ``pruner push`` reads it into the card)."""
        return asdict(self) | {"protocol": self.protocol()}


def load_student_unet(path: str | Path, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """A student saved as a stock UNet folder or inside a pipeline folder (or any teacher reference)."""
    return load_unet(str(path), dtype=dtype)


@contextlib.contextmanager
def _student_on(
    student: str | Path | UNet2DConditionModel, device: torch.device, dtype: torch.dtype
) -> Iterator[UNet2DConditionModel]:
    """The student on ``device`` in ``dtype``: loaded so; or a caller's model, copied when the dtype differs
    (``Module.to`` works in place, and fp32 weights cast to bf16 and back are not the weights they were), else
    moved to ``device`` and put back after."""
    if not isinstance(student, UNet2DConditionModel):
        yield load_student_unet(student, dtype).to(device)
        return
    first = next(student.parameters())
    if first.dtype != dtype:
        yield copy.deepcopy(student).to(device, dtype)
        return
    try:
        yield student.to(device)
    finally:
        student.to(first.device)


def eval_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is the dtype a frozen teacher takes on ``device`` (bf16 on a GPU, fp16 where bf16 is
    missing, fp32 on a CPU); else one of ``DTYPES``."""
    from pruner.device import teacher_dtype

    if name == "auto":
        return teacher_dtype(device)
    if name not in DTYPES:
        raise PrunerError(f"dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@torch.no_grad()
def decode_pictures(pipe: DiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to pictures through the pipeline's VAE; an fp16 VAE that overflows in fp16 (SDXL's:
    ``force_upcast``) decodes in fp32, as the stock SDXL pipeline does, and is put back in fp16."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    finally:
        if upcast:
            vae.to(torch.float16)
    return list(pipe.image_processor.postprocess(pixels, "pil"))


def _judge_dir(ref: ModelRef) -> Path | None:
    return ref.path / "judge" if ref.path is not None and (ref.path / "judge" / "judge.json").is_file() else None


def eval_prompts(n: int, seed: int, ref: ModelRef, prompts_file: Path | None) -> list[str]:
    """Prompts from a file (one a line), or, when the teacher is the bundled one, `n` captions none of which
    is a caption of its data set (same `n` and `seed`, same prompts; a smaller `n` gives a prefix)."""
    if prompts_file is not None:
        return read_prompts(prompts_file, n)
    if _judge_dir(ref) is None:
        raise PrunerError("this teacher has no built-in prompts; pass prompts_file= (one prompt per line)")
    from pruner.data.bundled import bundled_captions
    from pruner.tiny.synth import sample_prompts

    return sample_prompts(n, seed, exclude=bundled_captions())


def binomial_se(p: float, n: int) -> float:
    """Standard error of a share `p` of `n` independent trials, sqrt(p(1-p)/n): how far the prompt accuracy
    of `n` prompts may be from the accuracy over all prompts of the kind."""
    if n < 1:
        raise ValueError(f"a share needs at least one trial, got n={n}")
    if not 0 <= p <= 1:
        raise ValueError(f"a share lies in [0, 1], got p={p}")
    return math.sqrt(p * (1 - p) / n)


@torch.no_grad()
def _kd_loss(
    pipe: DiffusionPipeline, student: UNet2DConditionModel, latents: torch.Tensor, prompts: list[str], seed: int
) -> float:
    """Mean MSE of noise predictions over fixed timesteps and noise (seeded)."""
    from diffusers import DDPMScheduler

    from pruner.distillation.engine import KDInputs, held_out_kd, teacher_pass

    embeds, added = conditioning(pipe, prompts, latents.device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    batch = KDInputs.noised(scheduler, latents.float(), embeds, added, torch.Generator().manual_seed(seed))
    return held_out_kd(student, [(batch, teacher_pass(pipe.unet, batch).pred)])


Pictures = Callable[[list[Image.Image], list[Image.Image], list[str]], object]  # teacher's, student's, prompts


class FirstPictures:
    """The first ``n`` pictures of an evaluation, gathered from its batches (an ``on_pictures``): what a grid
    shows, not the whole set."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.teacher: list[Image.Image] = []
        self.student: list[Image.Image] = []
        self.prompts: list[str] = []

    def __call__(self, teacher: list[Image.Image], student: list[Image.Image], prompts: list[str]) -> None:
        room = max(0, self.n - len(self.prompts))
        self.teacher += teacher[:room]
        self.student += student[:room]
        self.prompts += prompts[:room]

    def grid(self, path: Path) -> Path:
        """Teacher row above student row, each prompt under its column."""
        return image_grid([self.teacher, self.student], path, captions=self.prompts, row_labels=["teacher", "student"])


class _Running:
    """What an evaluation keeps across its batches of pictures: sums (PSNR's squared error, the judge's hits,
    the field metrics' states) and the grid's first ``columns`` pictures, never the whole set: the teacher's and
    the student's pictures of 30,000 prompts at 1024 pixels are 190 GB in memory. Each batch also goes to
    ``on_pictures`` (kept on disk, a comparison's grid), then is dropped."""

    def __init__(self, scores: ScoreStream, judge_dir: Path | None, columns: int, on_pictures: Pictures | None) -> None:
        from pruner.tiny.judge import Judge

        self.scores, self.on_pictures = scores, on_pictures
        self.judge = None if judge_dir is None else Judge.load(judge_dir)
        self.squared, self.values = 0.0, 0  # PSNR's sum of squared differences (pixels in [0, 1]) and their count
        self.hits, self.n = [0, 0], 0  # prompts the judge found drawn right: the student's, the teacher's
        self.shown = FirstPictures(columns)

    def add(self, teacher: list[Image.Image], student: list[Image.Image], prompts: list[str]) -> None:
        x = np.stack([np.asarray(i, dtype=np.float64) / 255 for i in teacher])
        y = np.stack([np.asarray(i, dtype=np.float64) / 255 for i in student])
        self.squared, self.values = self.squared + float(((x - y) ** 2).sum()), self.values + x.size
        if self.judge is not None:
            for k, pictures in enumerate((student, teacher)):
                score = self.judge.score(pictures, prompts)
                self.hits[k] += round(float(score["prompt_accuracy"]) * int(score["n"]))
        self.n += len(prompts)
        self.shown(teacher, student, prompts)
        self.scores.add(student, teacher, prompts)
        if self.on_pictures is not None:
            self.on_pictures(teacher, student, prompts)

    def psnr(self) -> float:
        mse = self.squared / self.values
        return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(1.0 / mse))

    def accuracy(self, who: int) -> tuple[float | None, float | None]:
        """The judge's prompt accuracy of the student's (0) or the teacher's (1) pictures and its standard error;
        (None, None) without a judge."""
        if self.judge is None:
            return None, None
        accuracy = self.hits[who] / self.n
        return accuracy, binomial_se(accuracy, self.n)


@torch.no_grad()
def evaluate_student(
    student_path: str | Path | UNet2DConditionModel,
    teacher: Teacher,
    *,
    n_prompts: int = defaults.EVAL_PROMPTS,
    steps: int = defaults.EVAL_STEPS,
    guidance_scale: float = defaults.GUIDANCE,
    seed: int = 0,
    prompts_file: Path | None = None,
    grid_path: Path | None = None,
    grid_columns: int = 8,
    device: str | None = None,
    resolution: int | None = None,
    dtype: str = "auto",
    metric_options: MetricOptions | None = None,
    batch_size: int = defaults.EVAL_BATCH,
    on_pictures: Pictures | None = None,
) -> EvalReport:
    """Compare a student with its teacher on held-out prompts (on ``device``: default cuda when available), at
    ``resolution`` pixels a side (default the teacher's native size), both UNets and the pipeline in
    ``dtype`` (``auto``: bf16 on a GPU, fp32 on a CPU; see ``eval_dtype``), with the field metrics
    ``metric_options`` asks for; ``on_pictures`` receives each batch of the teacher's and the student's
    pictures and their prompts, in prompt order (``keep_pictures`` writes them; ``pruner compare`` draws one
    grid of several students). Pictures are scored batch by batch and dropped; see the module docstring."""
    from pruner.data.cache import check_resolution
    from pruner.device import resolve_device
    from pruner.diffusion import default_resolution

    dev = resolve_device(device)
    torch_dtype = eval_dtype(dtype, dev)
    ref = teacher.ref
    scorers = load_scorers(metric_options or MetricOptions(), ref.path)  # a missing model: refused before compute
    pipe = teacher.pipeline(device=dev, dtype=torch_dtype)
    if resolution is not None:
        check_resolution(resolution, pipe)
    side = resolution or default_resolution(dict(pipe.unet.config), int(pipe.vae_scale_factor))
    prompts = eval_prompts(n_prompts, seed, ref, prompts_file)
    sampling = {"seed": seed, "steps": steps, "guidance": guidance_scale, "resolution": side}
    running = _Running(ScoreStream(scorers), _judge_dir(ref), grid_columns if grid_path else 0, on_pictures)
    with _student_on(student_path, dev, torch_dtype) as student:
        check_fits(student, pipe.unet, _name(student_path), teacher.reference)
        kd, (s_ms, t_ms) = _compare(pipe, student, prompts, sampling, running.add, batch_size)
        s_params = sum(p.numel() for p in student.parameters())
    grid = running.shown.grid(grid_path) if grid_path else None
    (s_acc, s_se), (t_acc, t_se) = running.accuracy(0), running.accuracy(1)
    return EvalReport(
        _name(student_path), teacher.reference, kd, running.psnr(), s_acc, t_acc, s_ms, t_ms,
        s_params, sum(p.numel() for p in pipe.unet.parameters()), len(prompts), steps, guidance_scale,
        str(grid) if grid else None, prompt_accuracy_se=s_se, teacher_prompt_accuracy_se=t_se, resolution=side,
        dtype=str(torch_dtype).removeprefix("torch."), metrics=running.scores.result(),
        metric_settings=scorers.settings, seed=seed, prompts_file=None if prompts_file is None else str(prompts_file),
    )  # fmt: skip


class PictureKeeper:
    """Keeps an evaluation's pictures as they are made (``add``, an ``on_pictures``): ``teacher/`` and
    ``student/`` (``00000.png`` ..., prompt ``k`` as ``k``) and ``prompts.txt``, written batch by batch in a
    folder beside ``folder`` and renamed into place by ``publish``, so that metrics can be recomputed later
    (FID against ``teacher/`` as a reference); ``discard`` removes an unfinished one."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.n = folder, 0
        self.tmp: Path | None = None

    def add(self, teacher: list[Image.Image], student: list[Image.Image], prompts: list[str]) -> None:
        from pruner.io import temp_dir_beside

        if self.tmp is None:
            self.tmp = temp_dir_beside(self.folder)
            (self.tmp / "teacher").mkdir()
            (self.tmp / "student").mkdir()
        for k, (mine, theirs) in enumerate(zip(student, teacher, strict=True), self.n):
            theirs.save(self.tmp / "teacher" / f"{k:05d}.png")
            mine.save(self.tmp / "student" / f"{k:05d}.png")
        with (self.tmp / "prompts.txt").open("a", encoding="utf-8") as listing:
            listing.write("".join(p.replace("\n", " ") + "\n" for p in prompts))
        self.n += len(prompts)

    def publish(self) -> Path:
        from pruner.io import publish_dir

        if self.tmp is None:
            raise PrunerError(f"no pictures were made to keep in {self.folder}")
        return publish_dir(self.tmp, self.folder)

    def discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def kept_pictures(folder: str | Path | None) -> Iterator[Pictures | None]:
    """The ``on_pictures`` that keeps an evaluation's pictures in ``folder`` (None: none kept), published when
    the evaluation finishes and removed when it fails."""
    if folder is None:
        yield None
        return
    keeper = PictureKeeper(Path(folder))
    try:
        yield keeper.add
    except BaseException:
        keeper.discard()
        raise
    keeper.publish()


# What the teacher's pipeline feeds a UNet and reads back: a student must take and give the same.
_INTERFACE = ("in_channels", "out_channels", "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim",
              "projection_class_embeddings_input_dim", "encoder_hid_dim", "class_embed_type")  # fmt: skip


def check_fits(student: UNet2DConditionModel, teacher: UNet2DConditionModel, name: str, teacher_name: str) -> None:
    """Refuse, before any picture is made, a student whose inputs and outputs are not its teacher's (a student
    of another model): its first differing setting named, and the fix."""
    for key in _INTERFACE:
        mine, theirs = student.config.get(key), teacher.config.get(key)
        if mine != theirs:
            raise PrunerError(
                f"student {name} does not fit teacher {teacher_name}: its {key} is {mine}, the teacher's {theirs}; "
                "give the teacher it was made from (its recipe.yaml names it as teacher.model)"
            )


def _compare(
    pipe: DiffusionPipeline,
    student: UNet2DConditionModel,
    prompts: list[str],
    sampling: dict[str, Any],
    sink: Pictures,
    batch_size: int = defaults.EVAL_BATCH,
) -> tuple[float, tuple[float, float]]:
    """Teacher and student pictures from the same seeds, handed to ``sink`` a batch at a time (then dropped),
    the held-out KD loss, and both UNets' latency (ms).

    The prompts go ``batch_size`` at a time (30,000 MS-COCO captions do not fit one batch, nor their pictures
    memory); picture ``k`` keeps its seed, ``seed + k``, whatever the batch, and the KD loss is the prompts' mean."""
    kd_total = 0.0
    teacher_unet = pipe.unet
    for start in range(0, len(prompts), batch_size):
        chunk, at = prompts[start : start + batch_size], {**sampling, "seed": sampling["seed"] + start}
        t_out = generate(pipe, chunk, output_type="latent", **at).images
        kd_total += _kd_loss(pipe, student, t_out, chunk, at["seed"] + 1) * len(chunk)
        t_imgs = decode_pictures(pipe, t_out)
        pipe.unet = student
        try:
            s_imgs = generate(pipe, chunk, **at).images
        finally:
            pipe.unet = teacher_unet
        sink(t_imgs, s_imgs, chunk)
    kd = kd_total / len(prompts)
    latent, seq = sampling["resolution"] // int(pipe.vae_scale_factor), _seq_len(pipe)
    s_lat = measure_latency(student, latent, batch=2, seq_len=seq, runs=10)
    t_lat = measure_latency(teacher_unet, latent, batch=2, seq_len=seq, runs=10)
    return kd, (s_lat.total_ms, t_lat.total_ms)


def _name(student: str | Path | UNet2DConditionModel) -> str:
    if isinstance(student, UNet2DConditionModel):
        return str(getattr(student.config, "_name_or_path", "") or "<model>")
    return str(student)


def _seq_len(pipe: DiffusionPipeline) -> int:
    return int(pipe.tokenizer.model_max_length)
