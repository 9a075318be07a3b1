"""Publish a student on the Hugging Face Hub: its folder, and a model card that says how it was made.

``push`` creates the repository (``create_repo(exist_ok=True)``: an existing one is reused), the branch when a
revision is named, uploads the student's folder (``upload_folder``) and then the card as ``README.md``. The
card (huggingface_hub's ``ModelCard``) carries the recipe, the teacher and its license, the metrics the
distillation measured (``metrics.json``), an Evaluation section when ``pruner eval --json`` wrote an ``eval.json``
there (student and teacher side by side, every field metric, and the protocol that measured them), the tags
``diffusers``, ``text-to-image``, ``stable-diffusion-xl``, ``pruner``, and the commands that reproduce it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruner.errors import PrunerError
from pruner.recipe import Recipe, dump_recipe

__all__ = ["TAGS", "PushResult", "push", "student_card", "teacher_license"]

TAGS = ["diffusers", "text-to-image", "stable-diffusion-xl", "pruner"]
KNOWN_LICENSES = {  # teachers whose license pruner knows without asking the Hub
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "stabilityai/stable-diffusion-xl-base-0.9": "other",
    "segmind/SSD-1B": "apache-2.0",
    "segmind/Segmind-Vega": "apache-2.0",
    "tiny-sdxl": "apache-2.0",  # the bundled teacher: trained by pruner, under pruner's license
}
SKIP = [".*", "**/.*", "checkpoints/**", "logs/**", "README.md"]  # hidden files, training state, the old card


@dataclass(frozen=True)
class PushResult:
    """Where the student went: the repository, its branch, and the card that was uploaded."""

    repo_id: str
    url: str
    revision: str | None
    private: bool
    card: str

    def summary(self) -> str:
        where = f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return f"pushed to {where} ({'private' if self.private else 'public'}): {self.url}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PrunerError(f"{path} is not readable JSON ({exc}); restore it or remove it") from exc
    return data if isinstance(data, dict) else {}


def _metrics(folder: Path) -> dict[str, dict[str, Any]]:
    found = {name: folder / f"{name}.json" for name in ("metrics", "eval")}
    return {name: _read_json(path) for name, path in found.items() if path.is_file()}


def teacher_license(teacher: str) -> str | None:
    """The teacher's license id: known ones, a local folder's model card, or the Hub's card (None: unknown)."""
    if teacher in KNOWN_LICENSES:
        return KNOWN_LICENSES[teacher]
    from huggingface_hub import ModelCard

    local = Path(teacher)
    if local.exists() and not (local / "README.md").is_file():
        return None
    try:
        data = ModelCard.load(local / "README.md" if local.exists() else teacher).data
    except Exception:  # offline, gated, no card: the caller asks for license=
        return None
    return getattr(data, "license", None)


def _metrics_lines(metrics: dict[str, dict[str, Any]]) -> list[str]:
    train = metrics.get("metrics", {})
    lines = [f"| {key} | {train[key]} |" for key in ("params", "steps", "held_out_kd") if train.get(key) is not None]
    lines += [f"| final {k} loss | {v:.4g} |" for k, v in (train.get("final_losses") or {}).items()]
    return ["| metric | value |", "|---|---|", *lines] if lines else ["No metrics were recorded with this student."]


# The Evaluation table's rows from eval.json: heading, the student's key, the teacher's key, format.
_EVAL_ROWS = (
    ("parameters", "student_params", "teacher_params", ","), ("held-out KD loss (MSE)", "kd_loss", None, ".5f"),
    ("PSNR to the teacher (dB)", "psnr", None, ".2f"),
    ("prompt accuracy", "prompt_accuracy", "teacher_prompt_accuracy", ".1%"),
    ("UNet latency, batch 2 (ms)", "student_latency_ms", "teacher_latency_ms", ".2f"),
)  # fmt: skip


def _evaluation_lines(report: dict[str, Any]) -> list[str]:
    """The card's Evaluation section from ``eval.json``: student and teacher side by side (each field metric
    too), then the protocol that measured them (prompts, n, resolution, steps, guidance, seed, each metric's
    reference and model), so that a reader can measure again; nothing without an evaluation."""
    from pruner.comparison import METRIC_HEADINGS

    if not report:
        return []

    def cell(value: Any, fmt: str) -> str:
        return "-" if not isinstance(value, int | float) else f"{value:{fmt}}"

    rows = [(head, report.get(mine), report.get(theirs) if theirs else None, fmt)
            for head, mine, theirs, fmt in _EVAL_ROWS if report.get(mine) is not None]  # fmt: skip
    measured = report.get("metrics") or {}
    rows += [(METRIC_HEADINGS.get(k, k), v, measured.get(f"teacher_{k}"), ".4g") for k, v in measured.items()
             if not k.startswith("teacher_") and not k.endswith("_std")]  # fmt: skip
    protocol = report.get("protocol") or {k: report[k] for k in ("n_prompts", "steps", "guidance_scale") if k in report}
    return [
        "## Evaluation", "", f"`pruner eval` against the teacher `{report.get('teacher')}`:", "",
        "| metric | student | teacher |", "|---|---|---|",
        *(f"| {head} | {cell(mine, fmt)} | {cell(theirs, fmt)} |" for head, mine, theirs, fmt in rows), "",
        "Measured with:", "", *(f"- {k}: `{v}`" for k, v in protocol.items()), "",
    ]  # fmt: skip


def _eval_flags(report: dict[str, Any]) -> str:
    """The flags of ``pruner eval`` that measure again what ``eval.json`` holds: its protocol, its metrics."""
    protocol = report.get("protocol") or {}
    own = {"n": "--n", "resolution": "--resolution", "steps": "--steps", "guidance": "--guidance", "seed": "--seed",
           "features": "--fid-features", "reference": "--reference"}  # fmt: skip
    flags = [f"{own[k]} {v}" for k, v in protocol.items() if k in own and v is not None and v != "teacher"]
    flags += [f"--{k.replace('_', '-')} {v}" for k, v in protocol.items() if k.endswith("_model")]
    if report.get("prompts_file"):
        flags.insert(0, f"--prompts {report['prompts_file']}")
    asked = {"clip_score": "clip"}
    names = [asked.get(k, k) for k in report.get("metrics") or {} if not k.startswith("teacher_") and "_std" not in k]
    return "".join(f" {f}" for f in [*flags, *([f"--metrics {','.join(names)}"] if names else [])])


def _commands(recipe: Recipe, metrics: dict[str, dict[str, Any]], repo_id: str) -> str:
    steps = metrics.get("metrics", {}).get("steps")
    teacher = recipe.teacher.model
    return "\n".join([
        "pip install pruner",
        "pruner apply recipe.yaml --out student-init          # the untrained student, from the teacher's weights",
        f"pruner distill recipe.yaml --data CACHE --output OUT{f' --steps {steps}' if steps else ''}",
        f"pruner eval OUT --teacher {teacher}{_eval_flags(metrics.get('eval', {}))}",
        f"pruner push OUT --repo {repo_id}",
    ])  # fmt: skip


def student_card(recipe: Recipe, metrics: dict[str, dict[str, Any]], license: str, repo_id: str) -> Any:
    """The Hub model card (a ``huggingface_hub.ModelCard``) of a student made from ``recipe``."""
    from huggingface_hub import ModelCard, ModelCardData

    teacher = recipe.teacher.model
    hub_teacher = "/" in teacher and not Path(teacher).exists()
    data = ModelCardData(license=license, library_name="diffusers", pipeline_tag="text-to-image", tags=TAGS,
                         base_model=teacher if hub_teacher else None)  # fmt: skip
    body = "\n".join([
        f"# {recipe.name}", "", recipe.description, "",
        f"A block-pruned, distilled student of `{teacher}` made with pruner, under the "
        f"teacher's license ({license}). It loads with stock diffusers.", "",
        "## Recipe", "", "```yaml", dump_recipe(recipe).rstrip(), "```", "",
        "## Metrics", "", *_metrics_lines(metrics), "", *_evaluation_lines(metrics.get("eval", {})),
        "## Reproduce", "", "```", _commands(recipe, metrics, repo_id), "```", "",
    ])  # fmt: skip
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _student_folder(student: str | Path) -> Path:
    """The folder to upload: a pipeline folder, or a UNet folder; a pipeline's ``unet/`` means the pipeline."""
    folder = Path(student)
    if not folder.is_dir():
        raise PrunerError(f"{folder} is not a student folder; give the output folder of pruner distill or apply")
    if folder.name == "unet" and (folder.parent / "model_index.json").is_file():
        return folder.parent
    return folder


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """The Hub's failures as one line each: offline, no token or no write access, anything else."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise PrunerError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it when online") from None
    except LocalTokenNotFoundError:
        raise PrunerError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise PrunerError(f"the Hub refused {repo_id} ({status}): the token cannot write there; "
                              "use a write token (`hf auth login`) or a repository you own") from None  # fmt: skip
        raise PrunerError(f"the Hub failed on {repo_id}: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:  # no network: connection refused, DNS
        raise PrunerError(f"cannot reach the Hugging Face Hub ({exc}); push again when online") from exc


def _api(token: str | None) -> Any:
    from huggingface_hub import HfApi, get_token

    if not (token or get_token()):
        raise PrunerError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    return HfApi(token=token)


def push(
    student: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    license: str | None = None,
    api: Any = None,
) -> PushResult:
    """Upload a student's folder to the Hub repository ``repo_id`` (``USER/NAME``) with a model card.

    ``student``: the output folder of ``pruner distill`` (a pipeline, or a UNet) or of ``pruner apply``, with
    its ``recipe.yaml``. The repository is created when missing (``private`` then applies) and reused when
    it exists; ``revision`` names a branch, created from main when missing. ``license``: the teacher's license
    id when pruner cannot tell it (``teacher_license``). ``api``: an ``HfApi`` (default: one with ``token``).
    """
    from pruner.compat.target import student_recipe

    folder = _student_folder(student)
    recipe = student_recipe(folder)[1]
    license = license or teacher_license(recipe.teacher.model)
    if license is None:
        raise PrunerError(f"cannot tell the license of the teacher {recipe.teacher.model}; pass its license id "
                          "(license=, --license), e.g. openrail++")  # fmt: skip
    card = str(student_card(recipe, _metrics(folder), license, repo_id))
    api = api if api is not None else _api(token)
    with _hub_errors(repo_id):
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, ignore_patterns=SKIP,
                          commit_message=f"{recipe.name}: the student made by pruner")  # fmt: skip
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id, revision=revision,
                        commit_message="Model card")  # fmt: skip
    return PushResult(repo_id, str(url), revision, private, card)
