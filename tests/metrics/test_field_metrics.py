"""FID, KID and CLIP score by torchmetrics, meaningful on the bundled teacher's shape world: FID and KID on
its judge's features, the CLIP score with its own small CLIP; every missing model refused in one line."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from pruner.data.resolve import open_pictures
from pruner.errors import PrunerError
from pruner.metrics.clip import DEFAULT_CLIP, clip_score, load_clip
from pruner.metrics.distribution import fid, kid
from pruner.metrics.features import JudgeFeatures, SourcePictures, picture_features, pictures_tensor
from pruner.tiny.synth import caption, render, sample_scenes
from pruner.unet import bundled_teacher

TEACHER = bundled_teacher()
pytestmark = pytest.mark.skipif(TEACHER is None, reason="the bundled teacher is not installed")


@pytest.fixture(scope="module")
def scenes() -> list[Image.Image]:
    """96 rendered shape scenes none of the teacher's or the judge's training drew (the judge's eval stream)."""
    return [render(s) for s in sample_scenes(96, 11, stream="judge_eval")]


@pytest.fixture(scope="module")
def judge() -> JudgeFeatures:
    assert TEACHER is not None
    return JudgeFeatures(TEACHER / "judge")


def noisy(pictures: torch.Tensor, sigma: float) -> torch.Tensor:
    """``pictures`` with seeded Gaussian noise of ``sigma`` (in 0..255 units) added."""
    noise = torch.randn(pictures.shape, generator=torch.Generator().manual_seed(0)) * sigma
    return (pictures.float() + noise).clamp(0, 255).to(torch.uint8)


def test_fid_of_a_set_against_itself_is_about_zero_and_grows_with_noise(scenes, judge) -> None:  # type: ignore[no-untyped-def]
    x = pictures_tensor(scenes)
    scores = [fid(x, x if sigma == 0 else noisy(x, sigma), judge) for sigma in (0, 16, 48, 96)]
    assert scores[0] < 1e-3 * scores[1]
    assert scores[0] < scores[1] < scores[2] < scores[3]


def test_kid_of_two_samples_of_one_world_is_about_zero_and_grows_with_noise(scenes, judge) -> None:  # type: ignore[no-untyped-def]
    """KID is unbiased: two disjoint draws of scenes score near 0 (within a few standard deviations over its
    subsets); noise moves it well above. (One set against itself shares its pictures between the subsets, which
    the unbiased estimate counts below 0.)"""
    x, y = pictures_tensor(scenes[:48]), pictures_tensor(scenes[48:])
    (same, same_std), (some, _), (heavy, heavy_std) = (kid(x, noisy(y, s), judge, subsets=50) for s in (0, 48, 96))
    assert abs(same) < 2 * same_std
    assert same < some < heavy and some > 3 * same_std and heavy > 5 * heavy_std


def test_a_reference_folder_is_read_in_batches_at_the_generated_size(scenes, judge, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i, picture in enumerate(scenes[:10]):
        picture.resize((64, 48)).save(tmp_path / f"{i:03}.png")
    (tmp_path / "010.png").write_bytes(b"not a picture")  # passed over and counted, not fatal
    folder = SourcePictures(open_pictures(tmp_path), batch=4)
    batches = list(folder.batches(32))
    assert len(folder) == 11 and [len(b) for b in batches] == [4, 4, 2] and batches[0].shape[1:] == (3, 32, 32)
    assert folder.skipped == 1
    assert fid(folder.batches(32), pictures_tensor(scenes[:10]), judge) < fid(
        folder.batches(32), pictures_tensor(scenes[10:20]), judge
    )
    assert [len(b) for b in SourcePictures(open_pictures(tmp_path), limit=5, batch=4).batches(32)] == [4, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunerError, match="holds 0 pictures"):
        SourcePictures(open_pictures(tmp_path / "empty"))
    with pytest.raises(PrunerError, match="does not exist; give a folder of pictures"):
        open_pictures(tmp_path / "none")


def test_the_shape_clip_scores_matched_captions_above_shuffled_ones() -> None:
    """The shipped stand-in CLIP, on held-out scenes: a picture's own caption scores well above another's
    (a shuffled caption shares some words: the same background, a shape kind)."""
    assert TEACHER is not None
    model = load_clip(TEACHER / "clip")
    held_out = sample_scenes(64, 5, stream="judge_eval")
    pictures = pictures_tensor([render(s) for s in held_out])
    captions = [caption(s) for s in held_out]
    matched = clip_score(pictures, captions, model)
    shuffled = clip_score(pictures, captions[1:] + captions[:1], model)
    assert matched > shuffled + 20, (matched, shuffled)


def one_line(exc: pytest.ExceptionInfo[PrunerError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_missing_clip_model_is_one_line_naming_it_and_the_flag() -> None:
    with pytest.raises(PrunerError) as exc:
        load_clip(DEFAULT_CLIP)
    text = one_line(exc)
    assert DEFAULT_CLIP in text and "clip_model=" in text and "hf download" in text


def test_missing_inception_weights_are_one_line_naming_the_file_and_where_torch_fidelity_looks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))  # installed or not
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrunerError) as exc:
        picture_features("inception", None)
    text = one_line(exc)
    assert "weights-inception-2015-12-05-6726825d.pth" in text and str(tmp_path / "hub" / "checkpoints") in text


def test_inception_without_torch_fidelity_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as when not installed
    with pytest.raises(PrunerError) as exc:
        picture_features("inception", None)
    assert "pruner[metrics]" in one_line(exc)


def test_eval_adds_the_field_metrics_asked_for_on_the_bundled_teacher(tmp_path: Path) -> None:
    """`pruner eval --metrics fid,kid,clip`: the teacher against itself is at FID 0 and scores its own CLIP
    score; the table names the features, the reference and the CLIP that scored."""
    from typer.testing import CliRunner

    from pruner.cli import app

    args = [
        "eval",
        "tiny-sdxl",
        "--teacher",
        "tiny-sdxl",
        "--n",
        "4",
        "--steps",
        "2",
        "--grid",
        str(tmp_path / "g.png"),
    ]
    result = CliRunner().invoke(app, [*args, "--metrics", "fid,kid,clip", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics, settings = report["metrics"], report["metric_settings"]
    assert metrics["fid"] == 0.0 and metrics["clip_score"] == pytest.approx(metrics["teacher_clip_score"])
    assert {"kid", "kid_std"} <= set(metrics) and "teacher_fid" not in metrics
    assert TEACHER is not None
    assert settings == {"features": "judge", "reference": "teacher", "clip_model": str(TEACHER / "clip")}
    table = CliRunner().invoke(app, [*args, "--metrics", "clip"])
    assert table.exit_code == 0 and "CLIP score" in table.stdout and "FID" not in table.stdout
    bad = CliRunner().invoke(app, [*args, "--metrics", "fid,is"])
    assert bad.exit_code == 2 and "--metrics must be one of fid, kid, clip" in bad.output


def test_the_pictures_and_their_scores_do_not_depend_on_how_many_prompts_go_at_once() -> None:
    """batch_size= splits the prompts (30,000 captions do not fit one batch); each picture keeps its seed."""
    import pruner

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny-sdxl-bk-small.yaml"
    student = pruner.build_student("tiny-sdxl", recipe)
    one, three = (pruner.evaluate(student, "tiny-sdxl", n_prompts=3, steps=2, metrics="clip", batch_size=b,
                                  device="cpu") for b in (1, 3))  # fmt: skip
    assert one.psnr == pytest.approx(three.psnr, abs=1e-3)
    # CLIP reads 8-bit pixels that float rounding between batch sizes can flip: as in the test below, 2e-3
    assert one.metrics["clip_score"] == pytest.approx(three.metrics["clip_score"], rel=2e-3)
    assert one.kd_loss > 0 and three.kd_loss > 0


def test_an_evaluation_holds_one_batch_of_pictures_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """30,000 prompts: every metric is fed batch by batch as the pictures are made, and each batch is dropped
    before the next is made (the pictures still alive when a batch is scored are that batch's); kept pictures
    go to disk batch by batch. The scores are those of one batch of all the prompts."""
    import gc
    import weakref

    import pruner
    import pruner.evaluation
    from pruner.metrics.clip import ClipScore
    from pruner.metrics.distribution import Distances
    from pruner.metrics.scoring import ScoreStream

    made: list[weakref.ref[Image.Image]] = []
    alive: list[int] = []
    fed: list[int] = []
    decode, add, feed, clip = pruner.evaluation.decode_pictures, ScoreStream.add, Distances.add, ClipScore.add

    def decode_pictures(*args, **kwargs):  # type: ignore[no-untyped-def]
        pictures = decode(*args, **kwargs)
        made.extend(weakref.ref(p) for p in pictures)
        return pictures

    def scored(self, student, teacher, prompts):  # type: ignore[no-untyped-def]
        gc.collect()
        alive.append(sum(ref() is not None for ref in made))
        return add(self, student, teacher, prompts)

    monkeypatch.setattr(pruner.evaluation, "decode_pictures", decode_pictures)
    monkeypatch.setattr(ScoreStream, "add", scored)

    def counted(add_batch):  # type: ignore[no-untyped-def]
        def add(self, pictures, *args, **kwargs):  # type: ignore[no-untyped-def]
            fed.append(len(pictures))
            return add_batch(self, pictures, *args, **kwargs)

        return add

    monkeypatch.setattr(Distances, "add", counted(feed))
    monkeypatch.setattr(ClipScore, "add", counted(clip))
    kept = tmp_path / "kept"
    streamed = pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=6, steps=2, metrics="fid,kid,clip", batch_size=2,
                               device="cpu", keep_pictures=kept)  # fmt: skip
    assert alive == [2, 2, 2]  # the teacher's pictures of this batch only: the batches before are gone
    assert max(fed) == 2 and sum(fed) == 4 * 6  # FID/KID: the teacher's (reference) and the student's; CLIP: both
    assert len(list((kept / "student").iterdir())) == 6 and len((kept / "prompts.txt").read_text().splitlines()) == 6
    whole = pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=6, steps=2, metrics="fid,kid,clip", batch_size=6,
                            device="cpu")  # fmt: skip
    # A batch of 2 and one of 6 run the UNet's matmuls in other blocks: pictures that differ at float rounding
    # can flip a pixel's 8-bit value, which CLIP reads (1.5e-4 of the score on one machine): a tolerance, not ==.
    for key, value in whole.metrics.items():
        assert streamed.metrics[key] == pytest.approx(value, rel=2e-3, abs=1e-6), key


def test_too_few_prompts_for_fid_or_kid_are_refused_before_any_compute() -> None:
    import pruner

    with pytest.raises(PrunerError, match=r"^n_prompts= 3 is too few for kid: use at least 4$"):
        pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=3, metrics="fid,kid")
    with pytest.raises(PrunerError, match=r"^n_prompts= 1 is too few for fid: use at least 2$"):
        pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=1, metrics=["fid", "clip"])


def test_the_shape_clip_trains_and_loads_as_any_clip_folder(tmp_path: Path) -> None:
    """`python -m pruner.tiny.clip` in miniature: a few steps, saved, read back by load_clip and scored."""
    from pruner.tiny.clip import train_clip

    assert TEACHER is not None
    model, processor, figures = train_clip(TEACHER / "tokenizer", steps=2, batch_size=8)
    assert figures["steps"] == 2 and figures["final_loss"] > 0
    model.save_pretrained(str(tmp_path / "clip"))
    processor.save_pretrained(str(tmp_path / "clip"))
    scenes = sample_scenes(4, 0, stream="judge_eval")
    score = clip_score(
        pictures_tensor([render(s) for s in scenes]), [caption(s) for s in scenes], load_clip(tmp_path / "clip")
    )
    assert 0 <= score <= 100


def test_kept_pictures_serve_as_a_reference_folder_later(tmp_path: Path) -> None:
    """keep_pictures=: the teacher's and the student's pictures and the prompts, so that metrics can be
    recomputed; the teacher's folder, given as reference=, scores the teacher at FID 0 against itself."""
    import pruner

    kept = tmp_path / "pictures"
    first = pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=4, steps=2, keep_pictures=kept)
    assert sorted(p.name for p in (kept / "teacher").iterdir()) == [f"{k:05d}.png" for k in range(4)]
    assert len((kept / "prompts.txt").read_text().splitlines()) == 4 and first.metrics == {}
    again = pruner.evaluate("tiny-sdxl", "tiny-sdxl", n_prompts=4, steps=2, metrics="fid", reference=kept / "teacher")
    assert again.metrics["teacher_fid"] == pytest.approx(0.0, abs=1e-2) and again.metric_settings["reference"] == str(
        kept / "teacher"
    )
