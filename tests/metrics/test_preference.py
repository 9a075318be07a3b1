"""Preference scores (PickScore, ImageReward, HPSv2): PickScore by transformers, meaningful with the shipped
shape CLIP; ImageReward and HPSv2 by their own packages, whose absence, and whose missing weights, are one line."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pruner.cli import app
from pruner.errors import PrunerError
from pruner.metrics.preference import PICKSCORE, PICKSCORE_PROCESSOR, load_preference
from pruner.tiny.synth import caption, render, sample_scenes
from pruner.unet import bundled_teacher

TEACHER = bundled_teacher()
pytestmark = pytest.mark.skipif(TEACHER is None, reason="the bundled teacher is not installed")
runner = CliRunner()


def evaluate(tmp_path: Path, *args: str) -> list[str]:
    """`pruner eval` of the bundled teacher against itself, 2 prompts, 2 steps, and ``args``."""
    grid = str(tmp_path / "g.png")
    return ["eval", "tiny-sdxl", "--teacher", "tiny-sdxl", "--n", "2", "--steps", "2", "--grid", grid, *args]


def one_line(exc: pytest.ExceptionInfo[PrunerError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_pickscore_ranks_a_pictures_own_caption_above_anothers_with_the_shape_clip() -> None:
    """PickScore as published (exp(logit_scale) x cosine) with the shipped shape CLIP as its model: on held-out
    scenes the matched captions score far above shuffled ones, and nearly every picture prefers its own."""
    assert TEACHER is not None
    scorer = load_preference("pickscore", str(TEACHER / "clip"))
    scenes = sample_scenes(64, 5, stream="judge_eval")
    pictures, captions = [render(s) for s in scenes], [caption(s) for s in scenes]
    shuffled = captions[1:] + captions[:1]
    own, other = scorer.score(pictures, captions), scorer.score(pictures, shuffled)
    assert scorer.mean(pictures, captions) > scorer.mean(pictures, shuffled) + 10
    assert sum(a > b for a, b in zip(own, other, strict=True)) >= 0.9 * len(own)
    assert scorer.model == str(TEACHER / "clip")


def test_pickscore_reads_a_folder_without_a_processor_with_the_published_processor(tmp_path: Path) -> None:
    """A CLIP folder without its processor takes PickScore's (laion's CLIP-H), which is not here: one line
    naming the processor and the fix."""
    from transformers import CLIPModel

    assert TEACHER is not None
    CLIPModel.from_pretrained(str(TEACHER / "clip")).save_pretrained(str(tmp_path / "weights-only"))
    with pytest.raises(PrunerError) as exc:
        load_preference("pickscore", str(tmp_path / "weights-only"))
    text = one_line(exc)
    assert f"CLIP processor {PICKSCORE_PROCESSOR}" in text and "pickscore_model=" in text


def test_a_missing_pickscore_model_offline_is_one_line_naming_it_and_the_flag() -> None:
    with pytest.raises(PrunerError) as exc:
        load_preference("pickscore")  # no stand-in: the published model, not downloadable here
    text = one_line(exc)
    assert PICKSCORE in text and "hf download" in text and "pickscore_model=" in text


@pytest.mark.parametrize(("metric", "module", "package"), [("imagereward", "ImageReward", "image-reward"),
                                                          ("hpsv2", "hpsv2", "hpsv2")])  # fmt: skip
def test_a_missing_package_is_one_line_naming_the_extra_and_exits_2(
    metric: str, module: str, package: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    with pytest.raises(PrunerError) as exc:
        load_preference(metric)
    text = one_line(exc)
    assert package in text and "pip install 'pruner[preference]'" in text
    result = runner.invoke(app, evaluate(tmp_path, "--metrics", metric))
    assert result.exit_code == 2 and "pruner[preference]" in result.output and "Traceback" not in result.output


def test_missing_imagereward_weights_offline_are_one_line_naming_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ImageReward", types.ModuleType("ImageReward"))  # installed, no weights
    monkeypatch.setenv("HOME", str(tmp_path))  # image-reward's cache, ~/.cache/ImageReward, is empty
    for where in ("ImageReward-v1.0", str(tmp_path / "nowhere.pt")):
        with pytest.raises(PrunerError) as exc:
            load_preference("imagereward", where)
        text = one_line(exc)
        assert "ImageReward.pt med_config.json" in text and "imagereward_model=" in text
    result = runner.invoke(app, evaluate(tmp_path, "--metrics", "imagereward"))
    assert result.exit_code == 2 and "--imagereward-model" in result.output


def test_missing_hpsv2_weights_offline_are_one_line_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "hpsv2", types.ModuleType("hpsv2"))  # installed, no weights
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(PrunerError) as exc:
        load_preference("hpsv2", "v2.1")
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in one_line(exc)
    with pytest.raises(PrunerError, match=r"neither a checkpoint file nor one of v2\.0, v2\.1"):
        load_preference("hpsv2", str(tmp_path / "none.pt"))
    (tmp_path / "hps.pt").write_bytes(b"")
    with pytest.raises(PrunerError) as exc:  # the checkpoint is here, the CLIP-H it builds on is not
        load_preference("hpsv2", str(tmp_path / "hps.pt"))
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin" in one_line(exc)
    result = runner.invoke(app, evaluate(tmp_path, "--metrics", "hpsv2"))
    assert result.exit_code == 2 and "downloads are off" in result.output and "--hpsv2-model" in result.output


class FakeReward:
    """What ``ImageReward.load`` returns, scoring by prompt length; it prints as the real one does."""

    def __init__(self, name: str, device: str, med_config: str | None = None) -> None:
        print(f"load checkpoint from {name}")
        self.loaded = (name, med_config)

    def score(self, prompt: str, picture: Image.Image) -> float:
        return float(len(prompt))


def test_imagereward_loads_a_weights_folder_through_its_package_and_keeps_stdout_clean(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of ImageReward.pt and med_config.json goes to ``ImageReward.load`` as the file and its config;
    the package's prints go to stderr (``--json`` stays one object); the score is the mean of ``model.score``."""
    loaded: list[FakeReward] = []

    def load(name: str, device: str, **kwargs: Any) -> FakeReward:
        loaded.append(FakeReward(name, device, **kwargs))
        return loaded[-1]

    fake = types.ModuleType("ImageReward")
    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ImageReward", fake)
    for name in ("ImageReward.pt", "med_config.json"):
        (tmp_path / name).write_text("{}")
    scorer = load_preference("imagereward", str(tmp_path))
    assert loaded[0].loaded == (str(tmp_path / "ImageReward.pt"), str(tmp_path / "med_config.json"))
    assert scorer.model == str(tmp_path / "ImageReward.pt")
    assert scorer.mean([Image.new("RGB", (8, 8))] * 2, ["ab", "abcd"]) == 3.0
    out = capsys.readouterr()
    assert out.out == "" and "load checkpoint from" in out.err


@pytest.mark.slow
def test_eval_and_compare_report_pickscore_of_student_and_teacher_with_its_model(tmp_path: Path) -> None:
    """`--metrics pickscore` on tiny-sdxl scores with its shape CLIP: the teacher against itself scores alike in
    both columns, the tables and the JSON name the model, and the protocol is recorded beside the numbers."""
    assert TEACHER is not None
    result = runner.invoke(app, evaluate(tmp_path, "--metrics", "pickscore", "--json", "--seed", "3"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics, protocol = report["metrics"], report["protocol"]
    assert metrics["pickscore"] == pytest.approx(metrics["teacher_pickscore"], abs=1e-4) and metrics["pickscore"] > 0
    assert protocol == {"prompts": "tiny-sdxl's held-out captions", "n": 2, "resolution": 32, "steps": 2,
                        "guidance": 5.0, "seed": 3, "dtype": "float32",
                        "pickscore_model": str(TEACHER / "clip")}  # fmt: skip
    table = runner.invoke(app, evaluate(tmp_path, "--metrics", "pickscore"))
    assert table.exit_code == 0 and f"PickScore ({TEACHER / 'clip'})" in table.stdout
    args = ["compare", "tiny-sdxl", "--n", "2", "--steps", "2", "--metrics", "pickscore", "--seed", "3",
            "--grid", str(tmp_path / "c.png"), "--markdown", str(tmp_path / "c.md"), "--json"]  # fmt: skip
    compared = runner.invoke(app, args)
    assert compared.exit_code == 0, compared.output
    teacher, student = json.loads(compared.stdout)["rows"]
    assert teacher["metrics"]["pickscore"] == pytest.approx(metrics["teacher_pickscore"], abs=1e-4)
    assert student["metrics"]["pickscore"] == pytest.approx(metrics["pickscore"], abs=1e-4)
    assert "| PickScore |" in (tmp_path / "c.md").read_text() and json.loads(compared.stdout)["settings"] == protocol


class FakeHps(torch.nn.Module):
    """Stands in for hpsv2's open_clip ViT-H-14: features of a picture and of a prompt, normalised, in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = torch.nn.Linear(3, 4), torch.nn.Embedding(128, 4)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        image = torch.nn.functional.normalize(self.image(images.mean((2, 3))), dim=-1)
        return {
            "image_features": image,
            "text_features": torch.nn.functional.normalize(self.text(texts).mean(1), dim=-1),
        }


def test_hpsv2_reads_its_checkpoint_once_into_the_packages_model_and_scores_each_pair(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through a stand-in of the hpsv2 package (its model, preprocessing and tokenizer): the checkpoint's weights
    are what score, and each picture scores its own prompt as hpsv2.score does (image · text features)."""
    trained = FakeHps()
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "hps.pt")
    img_score = types.SimpleNamespace(model_dict={}, device="cpu")
    img_score.initialize_model = lambda: img_score.model_dict.update(
        model=FakeHps(), preprocess_val=lambda p: torch.tensor(np.asarray(p), dtype=torch.float32).permute(2, 0, 1)
    )
    tokenize = lambda texts: torch.tensor([[ord(c) % 128 for c in t[:4].ljust(4)] for t in texts])  # noqa: E731
    open_clip = types.SimpleNamespace(get_tokenizer=lambda name: tokenize)
    for name, module in (("hpsv2", types.SimpleNamespace(img_score=img_score)), ("hpsv2.img_score", img_score),
                         ("hpsv2.src", types.SimpleNamespace()), ("hpsv2.src.open_clip", open_clip)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: "cached")  # the CLIP-H it builds on
    scorer = load_preference("hpsv2", str(tmp_path / "hps.pt"))
    pictures = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue")]
    prompts = ["a red one", "green", "blue sky"]
    with torch.no_grad():
        out = trained(torch.stack([img_score.model_dict["preprocess_val"](p) for p in pictures]), tokenize(prompts))
    expected = (out["image_features"] @ out["text_features"].T).diagonal()
    assert scorer.score(pictures, prompts) == pytest.approx(expected.tolist(), abs=1e-6)
    assert scorer.model == str(tmp_path / "hps.pt")
