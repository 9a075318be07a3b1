"""Picture features for FID and KID: torch-fidelity's Inception-v3 (the field's, as torchmetrics runs it) or
the bundled teacher's judge trunk (a stand-in that means something in the shape world and loads offline).

Both take what torchmetrics' ``update`` is given here: uint8 pictures (N, 3, H, W).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from pruner.errors import PrunerError

if TYPE_CHECKING:
    from pruner.data.sources import Source, SourceRow

__all__ = [
    "INCEPTION_URL",
    "JudgeFeatures",
    "SourcePictures",
    "inception_weights",
    "missing_inception",
    "offline",
    "picture_features",
    "pictures_tensor",
]

# What torch-fidelity downloads for torchmetrics' FID/KID (feature=2048) into torch hub's checkpoints folder.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def offline() -> bool:
    """Whether downloads are off (HF_HUB_OFFLINE=1, as the project's tests and air-gapped machines set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pictures_tensor(images: Sequence[Image.Image], side: int | None = None) -> torch.Tensor:
    """PIL pictures as uint8 (N, 3, side, side): each centre-cropped to a square and resized to ``side`` (the
    first picture's side when None), as FID protocols resize a real set to the generated size."""
    side = side or min(images[0].size)
    arrays = []
    for image in images:
        image = image.convert("RGB")
        short = min(image.size)
        left, top = (image.width - short) // 2, (image.height - short) // 2
        image = image.crop((left, top, left + short, top + short))
        if short != side:
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class SourcePictures:
    """A reference set read through the data room's sources (``pruner.data.resolve.open_pictures``: a folder of
    pictures, a ``datasets`` set or tar shards), at most ``limit`` rows, in uint8 batches as FID and KID consume
    them, so that 30,000 pictures never sit in memory at once. Each picture is resized and cropped as ``pruner
    cache`` does it (shorter side to the generated side, centre crop, bicubic); a row without a picture, or
    whose bytes do not decode, is counted in ``skipped`` and passed over."""

    def __init__(self, source: Source, limit: int | None = None, batch: int = 64) -> None:
        self.source, self.batch = source, batch
        self.stop = len(source) if limit is None else min(limit, len(source))
        if self.stop < 2:
            raise PrunerError(
                f"reference= {source.description} holds {self.stop} pictures; FID and KID need at least 2"
            )
        self.skipped = 0

    def __len__(self) -> int:
        """Rows to read: the number of pictures, less those that turn out unreadable."""
        return self.stop

    def batches(self, side: int) -> Iterator[torch.Tensor]:
        """The pictures at ``side`` pixels, ``batch`` at a time."""
        pictures: list[torch.Tensor] = []
        for row in self.source.rows(0, self.stop):
            picture = self._read(row, side)
            if picture is None:
                self.skipped += 1
                continue
            pictures.append(picture)
            if len(pictures) == self.batch:
                yield torch.stack(pictures)
                pictures = []
        if pictures:
            yield torch.stack(pictures)

    @staticmethod
    def _read(row: SourceRow, side: int) -> torch.Tensor | None:
        """The row's picture as uint8 (3, side, side); None without one (a caption is not needed here)."""
        from pruner.data.cache import IMAGE_ERRORS, load_image

        if row.picture is None or row.skip not in (None, "no_text"):
            return None
        try:
            pixels, _ = load_image(row.picture, side)
        except IMAGE_ERRORS:
            return None
        return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class JudgeFeatures(nn.Module):
    """The bundled judge's trunk (128 features after its hidden layer): trained to read every attribute a shape
    caption names, so its features move when a picture's shapes, colours or places do.

    Its features are divided by their root-mean-square size on rendered scenes (a fixed, seeded set), so
    that one feature is of order 1 as Inception's are: KID's cubic kernel, scaled for such features, would
    otherwise reach 10^4 and drown its own estimate in rounding."""

    def __init__(self, judge_dir: Path, calibration: int = 128) -> None:
        from pruner.tiny.judge import Judge
        from pruner.tiny.synth import render, sample_scenes

        super().__init__()
        judge = Judge.load(judge_dir)
        self.trunk, self.size = judge.net.trunk.eval(), judge.size
        self.num_features = int(judge.meta["hidden"])  # the width of the trunk's last layer
        self.scale = 1.0
        scenes = pictures_tensor([render(s, self.size) for s in sample_scenes(calibration, 0, stream="judge_eval")])
        self.scale = float(self.forward(scenes).pow(2).mean().sqrt())

    @torch.no_grad()
    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        x = pictures.float() / 255
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.trunk((x - 0.5) / 0.25) / self.scale  # the judge's own input normalisation


def inception_weights() -> Path:
    """Where torch-fidelity keeps its Inception weights (torch hub's checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def missing_inception() -> PrunerError:
    """The one line said when the Inception weights are neither cached nor downloadable."""
    return PrunerError(
        f"FID/KID's Inception weights are not on this machine and downloads are off: fetch {INCEPTION_URL} to "
        f"{inception_weights()} (where torch-fidelity looks), or pass fid_features= a copy of that file"
    )


def picture_features(spec: str | Path, judge_dir: Path | None) -> int | nn.Module:
    """What torchmetrics' ``feature=`` gets: ``judge`` the judge trunk; ``inception`` torch-fidelity's
    Inception (2048 features; its weights cached or downloadable); a path, Inception weights from that file."""
    if spec == "judge":
        if judge_dir is None:
            raise PrunerError("fid_features= judge needs the bundled teacher (its judge); use inception")
        return JudgeFeatures(judge_dir)
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
    except ImportError as exc:
        raise PrunerError(
            f"FID/KID's Inception needs torch-fidelity and torchvision ({exc}): pip install 'pruner[metrics]'"
        ) from None
    if spec != "inception":
        if not Path(spec).is_file():
            raise PrunerError(f"fid_features= {spec} is not a file; give inception, judge or an Inception weights file")
        return _FileInception(Path(spec))
    if offline() and not inception_weights().is_file():
        raise missing_inception()
    return 2048


class _FileInception(nn.Module):
    """torchmetrics' Inception (2048 features) with its weights read from a file rather than downloaded."""

    def __init__(self, weights: Path) -> None:
        from torchmetrics.image.fid import NoTrainInceptionV3

        super().__init__()
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )
        self.num_features = 2048

    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        return self.net(pictures)
