"""The field metrics ``pruner eval`` reports: which models score, loaded before any picture is made, and the
scores of the student's (and the teacher's) pictures.

FID and KID compare the student's pictures with a reference: by default the teacher's pictures of the same
prompts and seeds (the distance distillation aims to close), or a folder of pictures (a real set such as
MS-COCO's validation pictures, as BK-SDM's protocol does; then the teacher is scored against it too). The CLIP
score and the preference scores (:mod:`pruner.metrics.preference`) score the student's and the teacher's pictures
for their prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from pruner.metrics import METRICS
from pruner.metrics.preference import PREFERENCE, Preference, load_preference

__all__ = ["MetricOptions", "Scorers", "load_scorers", "score_pictures"]


@dataclass(frozen=True)
class MetricOptions:
    """What was asked: ``metrics`` (of ``METRICS``), the FID/KID ``reference`` folder (None: the teacher's
    pictures), ``fid_features`` (auto, inception, judge, or an Inception weights file) and ``clip_model``
    (hub id or folder; None: the teacher's own stand-in CLIP when it has one, else ``DEFAULT_CLIP``);
    ``preference_models``: each preference score's model by metric (``pickscore``: hub id or folder; ``imagereward``:
    name, checkpoint file or folder; ``hpsv2``: version or checkpoint file), the published one where not given."""

    metrics: tuple[str, ...] = ()
    reference: Path | None = None
    fid_features: str = "auto"
    clip_model: str | None = None
    preference_models: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class Scorers:
    """The loaded models, and the settings recorded beside the scores (which features, which CLIP, which
    reference)."""

    metrics: tuple[str, ...]
    features: int | nn.Module | None = None
    clip: tuple[Any, Any] | None = None
    reference: Path | None = None
    preference: list[Preference] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _features_name(spec: str, teacher_dir: Path | None) -> str:
    """``auto``: the judge's trunk on the bundled teacher (Inception knows nothing of 32-pixel shapes, and its
    weights are a download), else Inception."""
    if spec != "auto":
        return spec
    return "judge" if teacher_dir is not None and (teacher_dir / "judge" / "judge.json").is_file() else "inception"


def _own_clip(teacher_dir: Path | None) -> Path | None:
    """The teacher's own stand-in CLIP (the bundled teacher's shape CLIP), when it ships one."""
    own = teacher_dir / "clip" if teacher_dir is not None else None
    return own if own is not None and (own / "config.json").is_file() else None


def _clip_name(name: str | None, teacher_dir: Path | None) -> str:
    from pruner.metrics.clip import DEFAULT_CLIP

    own = _own_clip(teacher_dir)
    return name if name is not None else str(own) if own is not None else DEFAULT_CLIP


def load_scorers(options: MetricOptions, teacher_dir: Path | None) -> Scorers:
    """Every model the asked metrics need, loaded now: a missing one is refused before any compute."""
    from pruner.metrics.features import picture_features

    scorers = Scorers(tuple(m for m in METRICS if m in options.metrics), reference=options.reference)
    if {"fid", "kid"} & set(scorers.metrics):
        name = _features_name(options.fid_features, teacher_dir)
        judge = teacher_dir / "judge" if teacher_dir is not None else None
        scorers.features = picture_features(name, judge if judge is not None and judge.is_dir() else None)
        scorers.settings |= {"features": name, "reference": str(options.reference or "teacher")}
    if "clip" in scorers.metrics:
        from pruner.metrics.clip import load_clip

        name = _clip_name(options.clip_model, teacher_dir)
        scorers.clip, scorers.settings["clip_model"] = load_clip(name), name
    for metric in (m for m in scorers.metrics if m in PREFERENCE):
        loaded = load_preference(metric, options.preference_models.get(metric), stand_in=_own_clip(teacher_dir))
        scorers.preference.append(loaded)
        scorers.settings[f"{metric}_model"] = loaded.model
    return scorers


def score_pictures(
    scorers: Scorers, student: Sequence[Image.Image], teacher: Sequence[Image.Image], prompts: Sequence[str]
) -> dict[str, float]:
    """The asked metrics: ``fid``, ``kid`` (and ``kid_std``) of the student against the reference, and of the
    teacher too (``teacher_fid`` ...) when the reference is a folder; ``clip_score`` and each preference score
    (``pickscore``, ``imagereward``, ``hpsv2``) of both."""
    from pruner.metrics.features import PictureFolder, pictures_tensor

    if not scorers.metrics:
        return {}
    s_pix, t_pix = pictures_tensor(student), pictures_tensor(teacher)
    out: dict[str, float] = {}
    if scorers.features is not None:
        side = int(s_pix.shape[-1])
        ref = t_pix if scorers.reference is None else PictureFolder(scorers.reference, side)
        out |= _distances(scorers.metrics, scorers.features, ref, s_pix, "")
        if scorers.reference is not None:
            out |= _distances(scorers.metrics, scorers.features, ref, t_pix, "teacher_")
    if scorers.clip is not None:
        from pruner.metrics.clip import clip_score

        out["clip_score"] = clip_score(s_pix, prompts, scorers.clip)
        out["teacher_clip_score"] = clip_score(t_pix, prompts, scorers.clip)
    for preference in scorers.preference:
        out[preference.name] = preference.mean(student, prompts)
        out[f"teacher_{preference.name}"] = preference.mean(teacher, prompts)
    return out


def _distances(
    metrics: tuple[str, ...], features: int | nn.Module, ref: Any, pictures: torch.Tensor, prefix: str
) -> dict[str, float]:
    """FID and KID (as asked) of ``pictures`` to the reference, their keys prefixed by whose pictures."""
    from pruner.metrics.distribution import fid, kid

    out: dict[str, float] = {}
    if "fid" in metrics:
        out[prefix + "fid"] = fid(ref, pictures, features)
    if "kid" in metrics:
        out[prefix + "kid"], out[prefix + "kid_std"] = kid(ref, pictures, features)
    return out
