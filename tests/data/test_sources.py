"""Every source ``pruner cache`` reads gives the same latents and conditioning for the same pictures and
captions: an image folder, a `datasets` save_to_disk folder and parquet file, and webdataset tars in
img2dataset's layout. Bad input is a counted skip or one line; a run over a non-folder source resumes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import pruner
from pruner.cli import app
from pruner.data import LatentCache
from pruner.data.resolve import open_pictures, open_source
from pruner.data.sources import choose_caption
from pruner.data.sources.hf import HFColumns, HFDataset
from pruner.errors import PrunerError
from pruner.recipe import load_recipe
from pruner.tiny.synth import write_dataset
from pruner.unet import bundled_teacher

datasets = pytest.importorskip("datasets")
N = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "images"
    write_dataset(root, N, seed=3, progress=False)
    return root


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _dataset(folder: Path) -> Any:
    rows = _rows(folder)
    images = [{"bytes": (folder / r["file_name"]).read_bytes(), "path": None} for r in rows]
    table = datasets.Dataset.from_dict({"image": images, "text": [r["text"] for r in rows]})
    return table.cast_column("image", datasets.Image())


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _shards(folder: Path, out: Path) -> str:
    """Two tars in img2dataset's layout; the second sample's caption sits in KEY.json instead of KEY.txt."""
    out.mkdir()
    for number, chunk in enumerate((_rows(folder)[:3], _rows(folder)[3:])):
        with tarfile.open(out / f"{number:05d}.tar", "w") as tar:
            for k, row in enumerate(chunk):
                key = f"{number:05d}{k:04d}"
                _add(tar, f"{key}.png", (folder / row["file_name"]).read_bytes())
                if k == 1:
                    _add(tar, f"{key}.json", json.dumps({"caption": row["text"]}).encode())
                else:
                    _add(tar, f"{key}.txt", row["text"].encode())
    return str(out / "{00000..00001}.tar")


def _items(cache: Path) -> list[dict[str, torch.Tensor]]:
    data = LatentCache(cache)
    return [data[i] for i in range(len(data))]


def _same(a: Path, b: Path) -> None:
    left, right = _items(a), _items(b)
    assert len(left) == len(right) == N
    for x, y in zip(left, right, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def sources(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same pictures and captions as an image folder, a save_to_disk folder, a parquet file and webdataset
    tars in img2dataset's layout (a brace pattern)."""
    root = tmp_path_factory.mktemp("sources")
    _dataset(folder).save_to_disk(str(root / "saved"))
    _dataset(folder).to_parquet(str(root / "rows.parquet"))
    return {"folder": str(folder), "saved": str(root / "saved"), "parquet": str(root / "rows.parquet"),
            "tars": _shards(folder, root / "shards")}  # fmt: skip


@pytest.fixture(scope="module")
def caches(
    sources: dict[str, str], tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each source cached once for this module's tests (the tars through the CLI)."""
    root = tmp_path_factory.mktemp("caches")
    for name in ("folder", "saved", "parquet"):
        summary = pruner.cache(sources[name], root / name, teacher=tiny_sdxl_pipeline, device="cpu")
        assert (summary.n_written, summary.n_skipped) == (N, 0), name
    result = CliRunner().invoke(app, ["cache", sources["tars"], "--teacher", tiny_sdxl_pipeline, "--out",
                                      str(root / "tars"), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return {name: root / name for name in sources}


def test_every_source_caches_the_same_rows_as_the_image_folder(folder: Path, caches: dict[str, Path]) -> None:
    for name in ("saved", "parquet", "tars"):
        _same(caches["folder"], caches[name])
    captions = [LatentCache(caches["tars"]).caption(i) for i in range(N)]
    assert captions == [row["text"] for row in _rows(folder)]  # the validation grid's prompts, from any source


@pytest.mark.slow
def test_search_and_distill_run_on_a_cache_of_every_source(
    caches: dict[str, Path], tiny_sdxl_pipeline: str, tmp_path: Path
) -> None:
    """`pruner search` then `pruner distill` of its found recipe on the cache of a `datasets` source and of tar
    shards (the folder's path is every other test's; the save_to_disk cache equals the parquet one, above): the
    same rows, so the same found plan and the same trained loss."""
    found, losses = {}, {}
    for name in ("parquet", "tars"):
        out = tmp_path / name
        search = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(caches[name]), "--trials", "1",
                  "--proxy-steps", "1", "--top-steps", "1", "--noise-seeds", "0", "--calibration", "4",
                  "--held-out", "2", "--storage", f"sqlite:///{out / 'study.db'}", "--out", str(out / "r"),
                  "--device", "cpu"]  # fmt: skip
        out.mkdir()
        result = CliRunner().invoke(app, search)
        assert result.exit_code == 0, result.output
        recipe = load_recipe(out / "r" / "found.yaml")
        assert recipe.distill.data == str(caches[name])
        found[name] = recipe.plan_obj()
        distill = ["distill", str(out / "r" / "found.yaml"), "--output", str(out / "student"), "--steps", "1",
                   "--batch-size", "2"]  # fmt: skip
        result = CliRunner().invoke(app, distill)  # the recipe's own data: the cache it was searched on
        assert result.exit_code == 0, result.output
        assert (out / "student" / "unet" / "config.json").is_file()
        losses[name] = json.loads((out / "student" / "metrics.json").read_text())["final_losses"]["total"]
    assert found["parquet"] == found["tars"]
    assert losses["tars"] == pytest.approx(losses["parquet"], rel=1e-3)


def test_a_fid_reference_reads_every_source_alike(
    sources: dict[str, str], folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--reference` goes through the cache's own sources: the same pictures as a folder with or without
    metadata.jsonl, a save_to_disk folder, a parquet file or tars give the same reference pixels, so FID between
    any two is 0; a Hub id takes its split and cap, and needs no caption column."""
    from pruner.metrics.distribution import fid
    from pruner.metrics.features import JudgeFeatures, SourcePictures

    teacher = bundled_teacher()
    assert teacher is not None, "the bundled teacher ships in the repository (pruner/tiny/teacher)"
    (plain := tmp_path / "plain").mkdir()
    for row in _rows(folder):
        (plain / row["file_name"]).write_bytes((folder / row["file_name"]).read_bytes())
    read = {name: torch.cat(list(SourcePictures(open_pictures(data)).batches(32)))
            for name, data in {**sources, "plain": str(plain)}.items()}  # fmt: skip
    assert all(torch.equal(pictures, read["plain"]) for pictures in read.values()) and len(read["plain"]) == N
    judge = JudgeFeatures(teacher / "judge")
    noisy = read["plain"].float() + 64 * torch.randn(read["plain"].shape, generator=torch.Generator().manual_seed(0))
    far = fid(read["plain"], noisy.clamp(0, 255).to(torch.uint8), judge)
    assert fid(SourcePictures(open_pictures(sources["parquet"])).batches(32), read["tars"], judge) < 1e-3 * far
    seen: dict[str, Any] = {}

    def load_dataset(name: str, config: str | None = None, **kwargs: Any) -> Any:
        seen.update(name=name, **kwargs)
        return _dataset(folder).remove_columns("text")  # pictures alone, as a reference set may be

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = SourcePictures(open_pictures("someone/coco-val", split="validation", max_rows=3), limit=3)
    assert seen["split"] == "validation" and len(hub) == 3
    assert torch.equal(torch.cat(list(hub.batches(32))), read["plain"][:3])


def test_eval_scores_against_a_reference_from_a_dataset(sources: dict[str, str], tmp_path: Path) -> None:
    """`pruner eval --metrics fid --reference PARQUET --reference-n 4`: the student's and the teacher's FID to
    the first 4 rows of the set, as FID of the kept pictures against those rows says; the cap recorded."""
    from pruner.metrics.distribution import fid
    from pruner.metrics.features import JudgeFeatures, SourcePictures, pictures_tensor

    teacher = bundled_teacher()
    assert teacher is not None, "the bundled teacher ships in the repository (pruner/tiny/teacher)"
    kept = tmp_path / "kept"
    args = ["eval", "tiny-sdxl", "--teacher", "tiny-sdxl", "--n", "4", "--steps", "2", "--metrics", "fid", "--json",
            "--reference", sources["parquet"], "--reference-n", "4", "--keep-pictures", str(kept),
            "--grid", str(tmp_path / "g.png")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    settings = report["metric_settings"]
    assert (
        settings["reference"] == sources["parquet"] and settings["reference_n"] == settings["reference_pictures"] == 4
    )
    pictures = pictures_tensor([Image.open(p).convert("RGB") for p in sorted((kept / "teacher").iterdir())])
    rows = SourcePictures(open_pictures(sources["parquet"]), limit=4).batches(32)
    expected = fid(rows, pictures, JudgeFeatures(teacher / "judge"))
    assert report["metrics"]["teacher_fid"] == pytest.approx(expected, rel=1e-4) and expected > 0
    assert report["metrics"]["fid"] == pytest.approx(report["metrics"]["teacher_fid"], rel=1e-4)  # student = teacher


def test_bad_tar_members_and_missing_captions_are_counted_skips(
    folder: Path, tiny_sdxl_pipeline: str, tmp_path: Path
) -> None:
    (shards := tmp_path / "shards").mkdir()
    with tarfile.open(shards / "a.tar", "w") as tar:
        _add(tar, "k0.png", (folder / "00000.png").read_bytes())
        _add(tar, "k0.txt", b"a small red circle")
        _add(tar, "k1.png", b"not a picture")
        _add(tar, "k1.txt", b"a large blue square")
        _add(tar, "k2.png", (folder / "00001.png").read_bytes())  # no caption
    whole = (shards / "a.tar").read_bytes()
    (shards / "b.tar").write_bytes(whole[:300])  # cut inside the first header: a damaged shard
    summary = pruner.cache(str(shards / "*.tar"), tmp_path / "out", teacher=tiny_sdxl_pipeline, device="cpu")
    assert summary.skipped_reasons == {"unreadable": 1, "no_text": 1, "bad_shard": 1}
    assert summary.n_written == 1


def test_a_killed_run_over_a_dataset_resumes(folder: Path, tiny_sdxl_pipeline: str, tmp_path: Path) -> None:
    _dataset(folder).to_parquet(str(tmp_path / "rows.parquet"))
    teacher = pruner.teacher.Teacher.resolve(tiny_sdxl_pipeline)
    source = open_source(tmp_path / "rows.parquet")
    from pruner.data import build_cache

    build_cache(source, teacher, tmp_path / "out", batch_size=1, shard_size=2, progress=False)
    meta = json.loads((tmp_path / "out" / "cache.json").read_text())
    (tmp_path / "out" / meta["shards"][-1]["file"]).unlink()  # as if killed before the last shard
    again = build_cache(source, teacher, tmp_path / "out", batch_size=1, shard_size=2, progress=False)
    assert again.resumed and again.n_written == N and again.n_encoded < N


def test_columns_splits_and_streams_are_one_line(folder: Path, tmp_path: Path) -> None:
    _dataset(folder).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(PrunerError, match=r"no column 'caption'; pass caption_column= one of image, text"):
        open_source(tmp_path / "saved", columns=HFColumns(caption="caption"))
    datasets.DatasetDict({"train": _dataset(folder)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(PrunerError, match=r"no split 'test'; pass split= one of train"):
        open_source(tmp_path / "dict", split="test")
    empty = datasets.Dataset.from_dict({"image": [], "text": []})  # (datasets cannot load an empty save_to_disk)
    with pytest.raises(PrunerError, match="pictures has no rows; give another split"):
        HFDataset(empty, "pictures", HFColumns())
    with pytest.raises(PrunerError, match="no tar shards match"):
        open_source(str(tmp_path / "nothing-{000..003}.tar"))


def test_a_hub_id_goes_to_load_dataset_with_its_arguments(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def load_dataset(name: str, config: str | None = None, **kwargs: Any) -> Any:
        seen.update(name=name, config=config, **kwargs)
        return _dataset(folder).to_iterable_dataset() if kwargs["streaming"] else _dataset(folder)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = open_source("someone/pictures", split="validation", revision="v1", config="small")
    assert seen == {"name": "someone/pictures", "config": "small", "split": "validation", "revision": "v1",
                    "streaming": False}  # fmt: skip
    assert len(source) == N
    with pytest.raises(PrunerError, match="pass max_rows="):
        open_source("someone/pictures", streaming=True)
    streamed = open_source("someone/pictures", streaming=True, max_rows=3)
    assert [row.key for row in streamed.rows(1)] == ["1", "2"]


def test_an_unreachable_or_unknown_hub_id_is_one_line_naming_the_fix(
    tiny_sdxl_pipeline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = ["cache", "some-user/some-set", "--teacher", tiny_sdxl_pipeline, "--out", str(tmp_path / "c")]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output and said.startswith("error:"), result.output
    assert "could not reach the Hugging Face Hub for dataset 'some-user/some-set'" in said
    assert "(offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" in said
    assert "hf download some-user/some-set --repo-type dataset" in said and "save_to_disk folder or parquet" in said

    def not_there(name: str, *_a: Any, **_k: Any) -> Any:  # what the Hub answers for a typo'd id
        missing = f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed."
        raise datasets.exceptions.DatasetNotFoundError(missing)

    monkeypatch.setattr(datasets, "load_dataset", not_there)
    result = CliRunner().invoke(app, [*args[:1], "some-user/some-sett", *args[2:]])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "error: Dataset 'some-user/some-sett' doesn't exist on the Hub or cannot be accessed: check the id" in said
    assert "--revision" in said and "hf auth login" in said


def test_several_captions_give_the_first_or_one_chosen_by_the_seed() -> None:
    captions = ["one", "two", "three"]
    assert choose_caption(captions) == "one"
    picks = {choose_caption(captions, seed=5, index=i) for i in range(30)}
    assert picks == set(captions)
    assert choose_caption(captions, seed=5, index=7) == choose_caption(captions, seed=5, index=7)
    assert choose_caption(["", " "]) is None
