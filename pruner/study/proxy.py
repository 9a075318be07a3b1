"""The search's proxy: a fixed calibration set with the teacher's outputs and features computed once, a
zero-shot KD loss, a short layer-level KD fine-tune against the cached teacher, and per-unit sensitivity.

No teacher forward runs inside a trial: every trial reads the same cached teacher predictions and
features, so trials cost one student's training steps and nothing else. Everything runs where the
teacher is (a GPU when there is one); the fine-tune is ``pruner.distillation.engine.KDEngine``'s step, the
one ``pruner distill`` takes, with ``PROXY_WEIGHTS``.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn
from tqdm import tqdm

from pruner.diffusion import VAE_SCALE, added_cond
from pruner.distillation.engine import (
    KDEngine,
    KDInputs,
    PlainRuntime,
    Runtime,
    TeacherOut,
    held_out_kd,
    make_optimizer,
    output_kd_gradients,
    teacher_pass,
)
from pruner.distillation.hooks import FeatureRecorder
from pruner.distillation.losses import LossWeights
from pruner.errors import PrunerError
from pruner.runtime import forked_map
from pruner.unet.maps import FeatureLevel, feature_map
from pruner.unet.plan import Plan, check_expressible, layout_of
from pruner.unet.surgery import build_student
from pruner.unet.topology import Topology

__all__ = [
    "PROXY_WEIGHTS",
    "Calibration",
    "CalibrationPlan",
    "ProxyRun",
    "ProxyScore",
    "build_calibration",
    "calibration_gradients",
    "group_sensitivity",
    "proxy_batch",
    "proxy_score",
    "split_rows",
    "unit_sensitivity",
]

PROXY_WEIGHTS = LossWeights(task=0.1, output_kd=1.0, feature_kd=0.5, normalize_features=True)
"""The proxy's loss weights: output KD first, normalised feature KD (feature terms differ in scale by
orders of magnitude between levels), a little task loss. What ranks plans best on the bundled teacher."""


def proxy_batch(latent: int) -> int:
    """Rows per proxy step: 16 at small latents, fewer as activations grow (SDXL at 1024: 1)."""
    return max(1, min(16, 16 * 32 * 32 // (latent * latent)))


@dataclass(frozen=True)
class CalibrationPlan:
    """Where the cached teacher features live and what they cost, printed when a search starts."""

    rows: int
    held_out: int
    resolution: int
    feature_bytes: int
    where: str
    dtype: torch.dtype

    def describe(self) -> str:
        gib = self.feature_bytes / 2**30
        return (
            f"calibration: {self.rows} training rows + {self.held_out} held out at {self.resolution}px; "
            f"teacher features {gib:.2f} GiB ({str(self.dtype).removeprefix('torch.')}) on {self.where}"
        )


@dataclass
class Calibration:
    """Noised inputs and conditioning on the device, the teacher's predictions on all of them, and its
    features on the training rows (rows ``n_train:`` are held out for scoring)."""

    inputs: KDInputs
    teacher_pred: torch.Tensor
    teacher_features: dict[str, torch.Tensor]
    n_train: int
    level: FeatureLevel
    scheduler: DDPMScheduler
    plan: CalibrationPlan | None = None
    _backing: IO[bytes] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.inputs.noisy.device

    @property
    def held_out(self) -> torch.Tensor:
        return torch.arange(self.n_train, len(self.inputs))

    def teacher_out(self, rows: torch.Tensor, names: Sequence[str]) -> TeacherOut:
        """The cached teacher outputs of ``rows`` (training rows), features moved to the device."""
        feats = {n: self.teacher_features[n][rows].to(self.device, non_blocking=True) for n in names}
        return TeacherOut(self.teacher_pred[rows.to(self.teacher_pred.device)], feats)

    def held_out_batches(self, batch: int = 32) -> Iterator[tuple[KDInputs, torch.Tensor]]:
        for chunk in self.held_out.split(batch):
            yield self.inputs.rows(chunk), self.teacher_pred[chunk]

    @torch.no_grad()
    def renoised(self, teacher: nn.Module, seed: int) -> Calibration:
        """The same rows with the training rows noised afresh (noise and timesteps drawn from ``seed``) and the
        teacher's predictions and features on them recomputed; the held-out rows, what plans are scored on, stay.

        Where every training row fits one proxy batch, another row order is the same batch and trains the same
        student: this is the draw that still varies between repeats. It costs one teacher pass over the
        training rows (at most one batch in that case)."""
        train, held = torch.arange(self.n_train), self.held_out
        rows = self.inputs.rows(train)
        g = torch.Generator().manual_seed(seed)
        fresh = KDInputs.noised(self.scheduler, rows.latents, rows.embeds, rows.added, g)
        with FeatureRecorder(teacher.eval(), list(self.teacher_features)) as rec:
            out = teacher_pass(teacher, fresh, rec)
        inputs = _joined(fresh, self.inputs.rows(held))
        pred = torch.cat([out.pred.to(self.teacher_pred.dtype), self.teacher_pred[held.to(self.teacher_pred.device)]])
        store = self.teacher_features
        features = {n: f.to(store[n].device, store[n].dtype) for n, f in out.features.items()}
        return Calibration(inputs, pred, features, self.n_train, self.level, self.scheduler)


def _joined(first: KDInputs, second: KDInputs) -> KDInputs:
    """The rows of ``first`` then those of ``second``."""
    cat = lambda x, y: torch.cat([x, y])  # noqa: E731
    added = {k: cat(v, second.added[k]) for k, v in first.added.items()} if first.added and second.added else None
    return KDInputs(cat(first.noisy, second.noisy), cat(first.timesteps, second.timesteps),
                    cat(first.noise, second.noise), cat(first.embeds, second.embeds), added,
                    cat(first.latents, second.latents))  # fmt: skip


def _stack_rows(data: Any, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    items = [data[i] for i in rows]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def memory_for_features(device: torch.device) -> int:
    """What a feature store may take on ``device``: 40% of the GPU's free memory, or of the host's available
    memory for a CPU device (the teacher, a student and its optimizer need the rest)."""
    from pruner.device import free_memory

    return int(0.4 * free_memory(device))


def disk_for_features() -> int:
    """What a memory-mapped feature store may take: 40% of the free disk under pruner's cache folder."""
    from pruner.io import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    return int(0.4 * shutil.disk_usage(cache_dir()).free)


def plan_calibration(
    shapes: dict[str, torch.Size],
    n_train: int,
    held_out: int,
    latent: int,
    device: torch.device,
    dtype: torch.dtype,
    vae_scale: int = VAE_SCALE,
) -> CalibrationPlan:
    """Features in the teacher's ``dtype`` on its device (GPU or host memory) when they fit; else in fp16
    memory-mapped on disk; fewer training rows when not even the disk holds them."""
    per_row = sum(math.prod(s) for s in shapes.values())
    resolution = latent * vae_scale
    if per_row * n_train * dtype.itemsize <= memory_for_features(device):
        return CalibrationPlan(n_train, held_out, resolution, per_row * n_train * dtype.itemsize, str(device), dtype)
    rows = max(2, min(n_train, disk_for_features() // (2 * per_row)))
    return CalibrationPlan(rows, held_out, resolution, per_row * rows * 2, "disk (memory-mapped)", torch.float16)


def _allocate(plan: CalibrationPlan, shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], IO[bytes] | None]:
    if not plan.where.startswith("disk"):
        dev = torch.device(plan.where)
        return {n: torch.empty((plan.rows, *s), dtype=plan.dtype, device=dev) for n, s in shapes.items()}, None
    from pruner.io import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    backing = tempfile.TemporaryFile(dir=cache_dir())  # noqa: SIM115  (lives as long as the calibration)
    total = sum(plan.rows * math.prod(s) for s in shapes.values())
    mm = np.memmap(backing, dtype=np.float16, mode="w+", shape=(total,))
    store, offset = {}, 0
    for n, s in shapes.items():
        size = plan.rows * math.prod(s)
        store[n] = torch.from_numpy(mm[offset : offset + size]).view(plan.rows, *s)
        offset += size
    return store, backing


def _noised_rows(data: Any, n: int, scheduler: DDPMScheduler, seed: int) -> KDInputs:
    rows = _stack_rows(data, range(n))
    added = added_cond(rows.get("pooled_prompt_embeds"), rows.get("time_ids"))
    added = {k: v.float() for k, v in added.items()} if added else None
    g = torch.Generator().manual_seed(seed)
    return KDInputs.noised(scheduler, rows["latents"].float(), rows["prompt_embeds"].float(), added, g)


def split_rows(available: int, n_train: int, n_held_out: int) -> tuple[int, int]:
    """Training and held-out rows from a cache of ``available`` rows: as asked when they are there, else
    shared in the asked proportion (at least 2 each), so a small cache does not lose its held-out set."""
    if available >= n_train + n_held_out:
        return n_train, n_held_out
    train = round(available * n_train / (n_train + n_held_out))
    train = min(max(2, train), available - 2)
    return train, available - train


@torch.no_grad()
def build_calibration(
    teacher: UNet2DConditionModel, data: Any, topo: Topology, *, n_train: int, n_held_out: int, level: FeatureLevel,
    scheduler: DDPMScheduler, seed: int = 0, batch: int = 16, status: Callable[[str], None] = lambda _m: None,
    vae_scale: int = VAE_SCALE, progress: bool = False,
) -> Calibration:  # fmt: skip
    """Take the first rows of a latent cache, noise them at seeded timesteps, and record the teacher (on its
    device, in its dtype): predictions on every row, features only on the training rows."""
    if len(data) < 4:
        raise ValueError("the calibration set needs at least 4 rows")
    n_train, n_held_out = split_rows(len(data), n_train, n_held_out)
    n = n_train + n_held_out
    device = next(teacher.parameters()).device
    inputs = _noised_rows(data, n, scheduler, seed).to(device)
    names = [t_name for _, t_name in feature_map(layout_of(Plan(), topo), topo, level)]
    with FeatureRecorder(teacher.eval(), names) as rec:
        first = teacher_pass(teacher, inputs.rows(torch.arange(1)), rec)
        shapes = {k: v.shape[1:] for k, v in first.features.items()}
        plan = plan_calibration(shapes, n_train, n_held_out, inputs.noisy.shape[-1], device,
                                next(teacher.parameters()).dtype, vae_scale)  # fmt: skip
        status(plan.describe())
        store, backing = _allocate(plan, shapes)
        preds = []
        with tqdm(total=n, desc="calibration", unit="row", dynamic_ncols=True, disable=not progress) as bar:
            for chunk in torch.arange(n).split(batch):
                out = teacher_pass(teacher, inputs.rows(chunk), rec)
                preds.append(out.pred)
                train = chunk[chunk < plan.rows]
                for name in names:
                    store[name][train] = out.features[name][: len(train)].to(store[name].device, store[name].dtype)
                bar.update(len(chunk))
    keep = torch.cat([torch.arange(plan.rows), torch.arange(n - plan.held_out, n)])
    return Calibration(inputs.rows(keep), torch.cat(preds)[keep.to(device)], store, plan.rows, level, scheduler,
                       plan, backing)  # fmt: skip


@dataclass(frozen=True)
class ProxyScore:
    zero_shot_kd: float
    proxy_kd: float
    steps: int


def calibration_gradients(calib: Calibration, rows: int = 32) -> Callable[[nn.Module], None]:
    """A ``grad_fn`` for Taylor width importance: output-KD gradients on the first calibration rows."""
    chunk = torch.arange(min(rows, calib.n_train))
    return output_kd_gradients(lambda: iter([(calib.inputs.rows(chunk), calib.teacher_pred[chunk])]))


class ProxyRun:
    """One plan's student on the calibration set, trained in segments: the rungs of a multi-fidelity search.

    The student is built once; :meth:`held_out` is its held-out KD loss now; :meth:`train_to` continues the
    layer-level KD fine-tune (``KDEngine``'s step against the cached teacher) up to a total step count;
    :meth:`restart` goes back to the freshly built student. Each segment decays its learning rate to zero
    (cosine, restarted per segment): a constant rate leaves a plan's loss swinging between steps, which
    scrambles how plans rank. Rows come in one order fixed by ``seed``, the same for every plan (common random
    numbers), so two plans differ only by what they are."""

    def __init__(
        self, teacher: UNet2DConditionModel, plan: Plan, topo: Topology, calib: Calibration, *, lr: float = 3e-4,
        batch: int = 16, seed: int = 0, importance: str = "magnitude", schedule: str = "cosine",
        weights: LossWeights = PROXY_WEIGHTS, runtime: Runtime | None = None,
    ) -> None:  # fmt: skip
        self.calib, self.batch, self.schedule = calib, batch, schedule
        self.runtime = runtime or PlainRuntime(calib.device)
        layout = check_expressible(plan, topo)
        grad_fn = calibration_gradients(calib) if importance == "taylor" else None
        self._build = lambda: build_student(teacher, plan, importance=importance, grad_fn=grad_fn,
                                           dtype=torch.float32)[0]  # fmt: skip
        self.pairs = feature_map(layout, topo, calib.level)
        self.weights, self.lr, self._seed = weights, lr, seed
        self._engine: KDEngine | None = None
        self._start()

    def _start(self) -> None:
        """The freshly built student, no step taken, rows from the start of their order."""
        self.student, self.steps = self._build(), 0
        g = torch.Generator().manual_seed(self._seed)
        self._rows = itertools.cycle(torch.randperm(self.calib.n_train, generator=g).split(self.batch))

    def restart(self) -> None:
        """Back to the freshly built student (the trained one freed first, so two students of an SDXL-size plan
        never share the device): the next :meth:`train_to` is one cosine segment from the pruned student, on
        the rows in the same order from the start."""
        self.close()
        del self.student
        self._start()

    def held_out(self) -> float:
        """Held-out KD loss of the student now (mean MSE against the teacher's cached predictions)."""
        return held_out_kd(self.student, self.calib.held_out_batches(2 * self.batch), self.runtime)

    def train_to(self, steps: int) -> float:
        """Train until ``steps`` steps in all, then return the held-out KD loss."""
        segment = steps - self.steps
        if segment <= 0:
            return self.held_out()
        if self._engine is None:
            torch.manual_seed(self._seed)
            self.student.train()
            opt = make_optimizer(self.student.parameters(), self.lr, weight_decay=0.0)
            self._engine = KDEngine(self.student, self.student, self.pairs, self.weights, self.calib.scheduler, opt,
                                    self.runtime)  # fmt: skip
        cosine = lambda k: 0.5 * (1 + math.cos(math.pi * k / segment)) if self.schedule == "cosine" else 1.0  # noqa: E731
        self._engine.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self._engine.optimizer, cosine)
        names = [t for _, t in self.pairs]
        for _ in range(segment):
            rows = next(self._rows)
            self._engine.step(self.calib.inputs.rows(rows), self.calib.teacher_out(rows, names))
        self.steps = steps
        return self.held_out()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> ProxyRun:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def proxy_score(
    teacher: UNet2DConditionModel, plan: Plan, topo: Topology, calib: Calibration, *, steps: int, lr: float = 3e-4,
    batch: int = 16, seed: int = 0, importance: str = "magnitude",
    schedule: str = "cosine", weights: LossWeights = PROXY_WEIGHTS, runtime: Runtime | None = None,
) -> ProxyScore:  # fmt: skip
    """Zero-shot KD of the freshly built student (fp32, on the calibration's device), then ``steps`` of KD
    and the held-out KD loss after them (one :class:`ProxyRun`, zero-shot and one rung)."""
    with ProxyRun(teacher, plan, topo, calib, lr=lr, batch=batch, seed=seed, importance=importance,
                  schedule=schedule, weights=weights, runtime=runtime) as run:  # fmt: skip
        zero = run.held_out()
        if steps <= 0:
            return ProxyScore(zero, zero, 0)
        return ProxyScore(zero, run.train_to(steps), steps)


def _skip_block(_module: nn.Module, args: tuple, _output: torch.Tensor) -> torch.Tensor:
    return args[0]  # a transformer layer is residual: skipping it is exactly removing it


@torch.no_grad()
def unit_sensitivity(
    teacher: UNet2DConditionModel,
    topo: Topology,
    calib: Calibration,
    names: Sequence[str],
    batch: int = 32,
    progress: bool = False,
    workers: int = 1,
) -> dict[str, float]:
    """Zero-shot KD loss of the teacher with each unit alone removed (LAPTOP-Diff's additive criterion).

    Transformer layers are skipped in place (exact, and free of the mid-depth coupling); other units are
    built as students. A unit that cannot be removed alone gets +inf. ``progress``: a bar over the units
    (SDXL has 78, each a pass over the held-out rows); ``workers``: forked processes measuring units at once
    (:func:`pruner.runtime.forked_map`; each unit's score is its own, so the scores equal one process's).
    """
    bar = tqdm(total=len(names), desc="sensitivity", unit="unit", dynamic_ncols=True, disable=not progress)
    with bar:
        scores = forked_map(lambda name: _unit_kd(teacher, calib, name, batch), names, workers, bar.update)
    return dict(zip(names, scores, strict=True))


@torch.no_grad()
def _unit_kd(teacher: UNet2DConditionModel, calib: Calibration, name: str, batch: int) -> float:
    """Held-out KD of the teacher with the unit ``name`` alone removed; +inf when it cannot be removed alone."""
    if ".transformer_blocks." in name:
        return _skipped_kd(teacher, calib, [name], batch)
    try:
        student, _ = build_student(teacher, Plan(frozenset({name})))
    except PrunerError:  # not removable alone; a GPU out of memory is not a score
        return float("inf")
    return held_out_kd(student, calib.held_out_batches(batch))


def _skipped_kd(teacher: UNet2DConditionModel, calib: Calibration, layers: Sequence[str], batch: int) -> float:
    """Held-out KD of the teacher with the transformer ``layers`` skipped in place, together."""
    modules = dict(teacher.named_modules())
    handles = [modules[name].register_forward_hook(_skip_block) for name in layers]
    try:
        return held_out_kd(teacher, calib.held_out_batches(batch))
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def group_sensitivity(
    teacher: UNet2DConditionModel,
    calib: Calibration,
    groups: Mapping[str, Sequence[str]],
    batch: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot KD of the teacher with each group's transformer layers removed together (skipped in place,
    exact): an attention module's cost when it is emptied, which the per-unit scores, each measured alone,
    do not add up to."""
    bar = tqdm(groups.items(), desc="module sensitivity", unit="module", dynamic_ncols=True, disable=not progress)
    return {name: _skipped_kd(teacher, calib, layers, batch) for name, layers in bar}
