"""Training one can watch: which experiment trackers a distillation reports to (accelerate's), and a teacher |
student picture grid on the validation prompts every ``validate_every`` steps, logged beside the held-out KD.

TensorBoard (installed with pruner) writes under the output's ``logs/``; Weights & Biases, MLflow and Comet
read their own settings (API key, project, tracking URI) from their usual environment variables. Each grid is
also kept as ``validation/step-NNNNNNN.png`` in the output folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pruner import defaults
from pruner.errors import PrunerError
from pruner.knobs import split_list

__all__ = ["TRACKERS", "ValidationGrids", "log_picture", "tracker_names"]

TRACKERS = defaults.TRACKERS  # the trackers report_to= names; "all" is those of them installed
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml"}


def _installed(tracker: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[tracker]) is not None


def tracker_names(report_to: str | Sequence[str]) -> tuple[str, ...]:
    """The trackers to start: those named (``all``: every one of ``TRACKERS`` installed here); a named tracker
    whose package is missing is refused before any compute, with the install line."""
    names = split_list(report_to)
    if "all" in names:
        return tuple(t for t in TRACKERS if _installed(t))
    for name in names:
        if not _installed(name):
            raise PrunerError(f"report_to= {name} needs the {_PACKAGES[name]} package: pip install {_PACKAGES[name]}")
    return tuple(dict.fromkeys(names))


def log_picture(acc: Any, path: Path, step: int, tag: str = "validation") -> None:
    """Log the picture at ``path`` to every tracker ``acc`` started, each in its own way (TensorBoard and W&B
    as an image at ``step``; MLflow and Comet as an artifact / image file)."""
    if not acc.is_main_process:
        return
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: pixels[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [pixels]}, step=step)
        elif tracker.name == "mlflow":
            tracker.log_artifact(str(path), tag)
        elif tracker.name == "comet_ml":
            tracker.tracker.log_image(str(path), name=f"{tag}-{step:07d}", step=step)


class ValidationGrids:
    """Teacher row above student row on ``prompts`` from the same seeds, drawn with a stage's live (frozen)
    teacher UNet and the teacher's other components: the teacher's row is drawn once, the student's each call.
    The student runs under autocast in the teacher's dtype (its fp32 master weights meet the half-precision
    text encoders of a GPU run)."""

    def __init__(self, teacher: Any, teacher_unet: Any, prompts: Sequence[str], out: Path, resolution: int | None):
        self.prompts, self.out, self.resolution = list(prompts), out, resolution
        self.pipe = teacher.pipeline(device=teacher_unet.device, dtype=teacher_unet.dtype, with_unet=False)
        self.pipe.unet = teacher_unet
        self.pipe.set_progress_bar_config(disable=True)
        self.teacher_row: list[Image.Image] | None = None

    @torch.no_grad()
    def draw(self, student: Any, step: int) -> Path:
        """The grid at ``step``, written to ``validation/step-NNNNNNN.png`` under the output folder."""
        from pruner.diffusion import generate, image_grid

        if self.teacher_row is None:
            self.teacher_row = generate(self.pipe, self.prompts, resolution=self.resolution).images
        teacher_unet, self.pipe.unet = self.pipe.unet, student
        was_training = student.training
        dtype, device = teacher_unet.dtype, teacher_unet.device
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        try:
            student.eval()
            with autocast:
                student_row = generate(self.pipe, self.prompts, resolution=self.resolution).images
        finally:
            self.pipe.unet = teacher_unet
            student.train(was_training)
        self.out.mkdir(parents=True, exist_ok=True)
        return image_grid([self.teacher_row, student_row], self.out / f"step-{step:07d}.png", captions=self.prompts,
                          row_labels=["teacher", "student"])  # fmt: skip
