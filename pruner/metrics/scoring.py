"""The field metrics ``pruner eval`` reports: which models score, loaded before any picture is made, and the
scores of the student's (and the teacher's) pictures.

FID and KID compare the student's pictures with a reference: by default the teacher's pictures of the same
prompts and seeds (the distance distillation aims to close), or a folder of pictures (a real set such as
MS-COCO's validation pictures, as BK-SDM's protocol does; then the teacher is scored against it too), read by the
data room's sources: a folder of pictures, a ``datasets`` set (save_to_disk folder, parquet files, Hub id) or
webdataset shards. The CLIP score and the preference scores (:mod:`pruner.metrics.preference`) score the
student's and the teacher's pictures for their prompts.

Every metric is fed batch by batch as the pictures are made (:class:`ScoreStream`): an evaluation over 30,000
prompts holds one batch of pictures at a time, never the set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch import nn

from pruner.metrics import METRICS
from pruner.metrics.preference import PREFERENCE, Preference, load_preference

if TYPE_CHECKING:
    from pruner.metrics.features import SourcePictures

__all__ = ["MetricOptions", "ScoreStream", "Scorers", "load_scorers"]


@dataclass(frozen=True)
class MetricOptions:
    """What was asked: ``metrics`` (of ``METRICS``), the FID/KID ``reference`` (a folder of pictures, a
    ``datasets`` set or tar shards, its ``reference_split`` and at most ``reference_n`` rows; None: the teacher's
    pictures), ``fid_features`` (auto, inception, judge, or an Inception weights file) and ``clip_model``
    (hub id or folder; None: the teacher's own stand-in CLIP when it has one, else ``DEFAULT_CLIP``);
    ``preference_models``: each preference score's model by metric (``pickscore``: hub id or folder; ``imagereward``:
    name, checkpoint file or folder; ``hpsv2``: version or checkpoint file), the published one where not given."""

    metrics: tuple[str, ...] = ()
    reference: str | None = None
    fid_features: str = "auto"
    clip_model: str | None = None
    preference_models: Mapping[str, str | None] = field(default_factory=dict)
    reference_split: str | None = None
    reference_n: int | None = None


@dataclass
class Scorers:
    """The loaded models, and the settings recorded beside the scores (which features, which CLIP, which
    reference)."""

    metrics: tuple[str, ...]
    features: int | nn.Module | None = None
    clip: tuple[Any, Any] | None = None
    reference: SourcePictures | None = None
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

    scorers = Scorers(tuple(m for m in METRICS if m in options.metrics))
    if {"fid", "kid"} & set(scorers.metrics):
        name = _features_name(options.fid_features, teacher_dir)
        judge = teacher_dir / "judge" if teacher_dir is not None else None
        scorers.features = picture_features(name, judge if judge is not None and judge.is_dir() else None)
        scorers.settings |= {"features": name, "reference": str(options.reference or "teacher")}
        scorers.reference = _reference(options, scorers.settings)
    if "clip" in scorers.metrics:
        from pruner.metrics.clip import load_clip

        name = _clip_name(options.clip_model, teacher_dir)
        scorers.clip, scorers.settings["clip_model"] = load_clip(name), name
    for metric in (m for m in scorers.metrics if m in PREFERENCE):
        loaded = load_preference(metric, options.preference_models.get(metric), stand_in=_own_clip(teacher_dir))
        scorers.preference.append(loaded)
        scorers.settings[f"{metric}_model"] = loaded.model
    return scorers


def _reference(options: MetricOptions, settings: dict[str, Any]) -> SourcePictures | None:
    """The reference set asked for, opened now (a missing one is refused before any picture is made); its split
    and cap recorded in ``settings`` where given."""
    if options.reference is None:
        return None
    from pruner.data.resolve import open_pictures
    from pruner.metrics.features import SourcePictures

    source = open_pictures(options.reference, split=options.reference_split, max_rows=options.reference_n)
    settings |= {k: v for k, v in (("reference_split", options.reference_split),
                                   ("reference_n", options.reference_n)) if v is not None}  # fmt: skip
    return SourcePictures(source, limit=options.reference_n)


class ScoreStream:
    """The asked metrics, fed one batch of pictures at a time as the evaluation makes them (``add``), so that no
    more than a batch is held; ``result()`` reads the reference set (in batches too) and computes them:
    ``fid``, ``kid`` (and ``kid_std``) of the student against the reference, and of the teacher too
    (``teacher_fid`` ...) when the reference is not the teacher's pictures; ``clip_score`` and each preference
    score (``pickscore``, ``imagereward``, ``hpsv2``) of both."""

    def __init__(self, scorers: Scorers) -> None:
        from pruner.metrics.clip import ClipScore
        from pruner.metrics.distribution import Distances

        self.scorers, self.side = scorers, 0
        features, asked = scorers.features, scorers.metrics
        self.student = None if features is None else Distances(asked, features)
        self.teacher = None if features is None or scorers.reference is None else Distances(asked, features)
        self.clip = None if scorers.clip is None else (ClipScore(scorers.clip), ClipScore(scorers.clip))
        self.preference = {p.name: [0.0, 0.0] for p in scorers.preference}  # sums: student's, teacher's
        self.n = 0

    def add(self, student: Sequence[Image.Image], teacher: Sequence[Image.Image], prompts: Sequence[str]) -> None:
        """One batch: the student's and the teacher's pictures of ``prompts`` (same seeds)."""
        from pruner.metrics.features import pictures_tensor

        if not self.scorers.metrics:
            return
        s_pix, t_pix = pictures_tensor(student), pictures_tensor(teacher)
        self.side, self.n = int(s_pix.shape[-1]), self.n + len(prompts)
        if self.student is not None:
            if self.scorers.reference is None:
                self.student.add(t_pix, real=True)
            self.student.add(s_pix, real=False)
        if self.teacher is not None:
            self.teacher.add(t_pix, real=False)
        if self.clip is not None:
            self.clip[0].add(s_pix, prompts)
            self.clip[1].add(t_pix, prompts)
        for preference in self.scorers.preference:
            sums = self.preference[preference.name]
            sums[0] += sum(preference.score(student, prompts))
            sums[1] += sum(preference.score(teacher, prompts))

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.student is not None:
            self._read_reference()
            out |= self.student.result()
            out |= self.teacher.result("teacher_") if self.teacher is not None else {}
        if self.clip is not None:
            out |= {"clip_score": self.clip[0].result(), "teacher_clip_score": self.clip[1].result()}
        for name, (mine, theirs) in self.preference.items():
            out |= {name: mine / self.n, f"teacher_{name}": theirs / self.n}
        return out

    def _read_reference(self) -> None:
        """Feed the reference set, at the generated side, to the student's and the teacher's distances (read
        once for both); how many pictures it gave is recorded beside the scores."""
        reference = self.scorers.reference
        if reference is None or self.student is None:
            return
        for batch in reference.batches(self.side):
            self.student.add(batch, real=True)
            if self.teacher is not None:
                self.teacher.add(batch, real=True)
        self.scorers.settings["reference_pictures"] = self.student.counts[True]
