"""Which trackers a distillation reports to (accelerate's), chosen without network: what reaches Accelerator,
and what is refused before any compute."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import pruner
from pruner.distillation import run, tracking
from pruner.distillation.run import DistillOptions
from pruner.distillation.tracking import TRACKERS, tracker_names
from pruner.errors import PrunerError


def pretend_installed(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """find_spec finds ``names`` (and whatever is really installed); the others of TRACKERS are missing."""
    real = importlib.util.find_spec

    def find(name: str, *args: Any) -> Any:
        if name in TRACKERS and name != "tensorboard":
            return object() if name in names else None
        return real(name, *args)

    monkeypatch.setattr(tracking.importlib.util, "find_spec", find)


def test_all_is_every_tracker_installed_and_a_list_keeps_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_installed(monkeypatch, "mlflow")
    assert tracker_names("all") == ("tensorboard", "mlflow")
    pretend_installed(monkeypatch, "wandb", "mlflow", "comet_ml")
    assert tracker_names("all") == TRACKERS
    assert tracker_names("wandb, tensorboard,wandb") == ("wandb", "tensorboard")


def test_a_tracker_whose_package_is_missing_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_installed(monkeypatch)
    with pytest.raises(PrunerError) as caught:
        tracker_names("tensorboard,comet_ml")
    assert str(caught.value) == "report_to= comet_ml needs the comet_ml package: pip install comet_ml"


@pytest.mark.parametrize("report_to", [("wandb",), ("tensorboard", "mlflow", "comet_ml")])
def test_the_trackers_chosen_reach_accelerate(
    report_to: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(run, "Accelerator", lambda **kwargs: seen.update(kwargs))
    run._accelerator(tmp_path, DistillOptions(report_to=report_to))
    assert seen["log_with"] == list(report_to) and seen["project_config"].logging_dir == str(tmp_path / "logs")


def test_distill_refuses_a_missing_tracker_and_prompts_file_before_any_compute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pretend_installed(monkeypatch)
    monkeypatch.setattr(run, "distill_recipe", lambda *a: pytest.fail("reached compute"))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny-sdxl-bk-small.yaml"
    with pytest.raises(PrunerError, match=r"^report_to= wandb needs the wandb package"):
        pruner.distill(recipe, tmp_path / "out", report_to="wandb")
    with pytest.raises(PrunerError, match=r"^report_to= must be one of tensorboard, wandb, mlflow, comet_ml, all"):
        pruner.distill(recipe, tmp_path / "out", report_to="neptune")
    with pytest.raises(PrunerError, match="cannot read prompts file"):
        pruner.distill(recipe, tmp_path / "out", validation_prompts=tmp_path / "missing.txt")
    seen: list[Any] = []

    def record(recipe: Any, out: Path, opts: DistillOptions) -> SimpleNamespace:
        seen.append(opts)
        return SimpleNamespace(output=out)

    monkeypatch.setattr(run, "distill_recipe", record)
    (tmp_path / "p.txt").write_text("a red circle\n\na blue square\n")
    pruner.distill(recipe, tmp_path / "out", validation_prompts=tmp_path / "p.txt", report_to="all")
    assert seen[0].validation_prompts == ("a red circle", "a blue square") and seen[0].report_to == ("tensorboard",)


class FakeTracker:
    """What accelerate's trackers offer, recording the calls."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, []  # type: ignore[var-annotated]
        self.tracker = self  # comet's Experiment is its tracker attribute

    def log_images(self, values: dict[str, Any], step: int, **kwargs: Any) -> None:
        self.calls.append(("log_images", {k: [getattr(v, "shape", None) for v in vs] for k, vs in values.items()},
                           step, kwargs))  # fmt: skip

    def log_artifact(self, path: str, artifact_path: str) -> None:
        self.calls.append(("log_artifact", Path(path).name, artifact_path))

    def log_image(self, path: str, name: str, step: int) -> None:
        self.calls.append(("log_image", Path(path).name, name, step))


def test_each_tracker_gets_the_grid_its_own_way(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (6, 4)).save(tmp_path / "step-0000005.png")
    trackers = [FakeTracker(n) for n in TRACKERS]
    tracking.log_picture(SimpleNamespace(is_main_process=True, trackers=trackers), tmp_path / "step-0000005.png", 5)
    board, wandb, mlflow, comet = (t.calls for t in trackers)
    assert board == [("log_images", {"validation": [(4, 6, 3)]}, 5, {"dataformats": "NHWC"})]
    assert wandb == [("log_images", {"validation": [(4, 6, 3)]}, 5, {})]
    assert mlflow == [("log_artifact", "step-0000005.png", "validation")]
    assert comet == [("log_image", "step-0000005.png", "validation-0000005", 5)]
