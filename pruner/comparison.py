"""``pruner compare``: the teacher and several students on the same prompts and seeds, in one table and one
picture grid: what a user posts when choosing between students (the found one, a Vega-style one).

Each student is evaluated as ``pruner eval`` evaluates it (:func:`pruner.evaluation.evaluate_student`); the
teacher's pictures are the same for every student (same prompts, same seeds), so its row is read off the
first. MACs are counted once per architecture (:func:`pruner.inspection.inspect_model`, whose counts are
cached) at the evaluated resolution, batch 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel

from pruner.diffusion import image_grid
from pruner.evaluation import EvalReport, FirstPictures, evaluate_student
from pruner.teacher import Teacher

__all__ = ["COLUMNS", "Comparison", "ComparisonRow", "compare_students"]


@dataclass
class ComparisonRow:
    """One model's figures (None where not measured: the teacher's own KD loss is 0 by definition)."""

    name: str
    params: int
    macs: int | None
    latency_ms: float
    kd_loss: float | None
    psnr: float | None
    prompt_accuracy: float | None
    metrics: dict[str, float] = field(default_factory=dict)


# The table's columns: key, heading, format (the field metrics follow, those measured).
COLUMNS = (
    ("params", "params", "count"), ("macs", "MACs", "macs"), ("latency_ms", "UNet ms", ".2f"),
    ("kd_loss", "held-out KD", ".5f"), ("psnr", "PSNR dB", ".2f"), ("prompt_accuracy", "prompt acc.", "%"),
)  # fmt: skip
METRIC_HEADINGS = {"fid": "FID", "kid": "KID", "clip_score": "CLIP score", "pickscore": "PickScore",
                   "imagereward": "ImageReward", "hpsv2": "HPSv2"}  # fmt: skip
METRIC_FORMATS = {"clip_score": ".2f", "pickscore": ".3f", "imagereward": ".3f"}  # else .4f


@dataclass
class Comparison:
    """The rows (teacher first), the settings every row was measured under, and the grid's path."""

    teacher: str
    rows: list[ComparisonRow]
    settings: dict[str, Any]
    grid: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metric_keys(self) -> list[str]:
        """The field metrics measured, in a stable order."""
        return [k for k in METRIC_HEADINGS if any(k in r.metrics for r in self.rows)]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headings and formatted cells, one row per model ("-" where not measured)."""
        from pruner.budget import KINDS

        def cell(value: Any, fmt: str) -> str:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return "-"
            if fmt in ("count", "macs"):
                return KINDS["params" if fmt == "count" else "macs"].format(value)
            return f"{100 * value:.1f}%" if fmt == "%" else f"{value:{fmt}}"

        keys = self.metric_keys()
        heads = [heading for _, heading, _ in COLUMNS] + [METRIC_HEADINGS[k] for k in keys]
        body = [
            [r.name, *(cell(getattr(r, key), fmt) for key, _, fmt in COLUMNS),
             *(cell(r.metrics.get(k), METRIC_FORMATS.get(k, ".4f")) for k in keys)]
            for r in self.rows
        ]  # fmt: skip
        return ["model", *heads], body

    def markdown(self) -> str:
        """The table in GitHub markdown, with the settings under it."""
        heads, body = self.table()
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        said = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return "\n".join(lines) + f"\n\n{said}\n"


def _row(name: str, report: EvalReport, macs: int | None, teacher: bool) -> ComparisonRow:
    """A model's row from its evaluation: the student's columns, or the teacher's (``teacher``)."""
    m = report.metrics
    if teacher:
        own = {k.removeprefix("teacher_"): v for k, v in m.items() if k.startswith("teacher_")}
        own |= {k: 0.0 for k in ("fid", "kid") if k in m and report.metric_settings.get("reference") == "teacher"}
        return ComparisonRow(name, report.teacher_params, macs, report.teacher_latency_ms, None, None,
                             report.teacher_prompt_accuracy, own)  # fmt: skip
    mine = {k: v for k, v in m.items() if not k.startswith("teacher_")}
    return ComparisonRow(name, report.student_params, macs, report.student_latency_ms, report.kd_loss, report.psnr,
                         report.prompt_accuracy, mine)  # fmt: skip


def _macs(target: str | Path | UNet2DConditionModel, side: int | None) -> int | None:
    """A model's MACs per UNet call at ``side`` pixels (None for a model given as an object, or uncountable)."""
    if isinstance(target, UNet2DConditionModel):
        return None
    from pruner.inspection import inspect_model

    return inspect_model(str(target), resolution=side, batch=1, macs=True).macs


def compare_students(
    students: list[str | Path | UNet2DConditionModel], teacher: Teacher, *, grid_path: Path | None = None,
    grid_columns: int = 8, **settings: Any,
) -> Comparison:  # fmt: skip
    """Evaluate each student against ``teacher`` with the same ``settings`` (``evaluate_student``'s), then one
    table and one grid (teacher row above a row per student, each prompt under its column)."""
    shown = [FirstPictures(grid_columns if grid_path is not None else 0) for _ in students]
    names = [str(s) if not isinstance(s, UNet2DConditionModel) else f"student {i + 1}" for i, s in enumerate(students)]
    reports = [
        evaluate_student(s, teacher, on_pictures=first, **settings) for s, first in zip(students, shown, strict=True)
    ]
    first = reports[0]
    table = [_row(f"{teacher.reference} (teacher)", first, _macs(teacher.reference, first.resolution), True)]
    table += [_row(n, r, _macs(s, r.resolution), False) for n, r, s in zip(names, reports, students, strict=True)]
    grid = None
    if grid_path is not None:
        prompts = shown[0].prompts
        pictures = [shown[0].teacher] + [first.student for first in shown]
        labels = ["teacher", *(Path(n).name or n for n in names)]  # a folder's name fits the label column
        grid = str(image_grid(pictures, grid_path, captions=prompts, row_labels=labels))
    return Comparison(teacher.reference, table, first.protocol(), grid)
