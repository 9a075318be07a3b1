"""The latent cache: exact encodings, skipped rows, SDXL and SD 1.x teachers, atomic resumable writes, reading back."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file

import pruner.data.cache as cache_mod
from pruner.data import CacheSummary, LatentCache, build_cache
from pruner.data.cache import load_image
from pruner.errors import PrunerError
from pruner.teacher import Teacher
from pruner.tiny.synth import write_dataset
from pruner.tiny.text import build_text_encoders, build_tokenizer
from pruner.tiny.train import build_vae

ENCODE_BATCH = cache_mod._encode_batch  # the real one, before any test patches it
N_IMAGES = 10  # plus three unusable rows: 13 in metadata.jsonl
SD_UNET: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
    "sample_size": 8,
}


def _vae() -> Any:
    torch.manual_seed(0)
    vae = build_vae().eval()
    vae.register_to_config(scaling_factor=0.7)  # not 1, so a missing scale cannot hide
    return vae


@pytest.fixture(scope="module")
def sdxl_teacher(tiny_sdxl_pipeline: str) -> str:
    """A random-weight SDXL pipeline of the tiny teacher's shape (32 px, 4x VAE, two encoders)."""
    return tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd_teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight SD 1.x pipeline: one text encoder, a UNet without added conditioning."""
    root = tmp_path_factory.mktemp("sd")
    encoder = build_text_encoders(len(tokenizer := build_tokenizer(root / "tok")), seed=1)[0]
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD_UNET),
        scheduler=EulerDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "pipe")
    return str(root / "pipe")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten synthetic pictures, with a corrupt PNG, a missing file and a caption-less row among them."""
    folder = tmp_path_factory.mktemp("data") / "images"
    write_dataset(folder, N_IMAGES, seed=0, progress=False)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    rows = (folder / "metadata.jsonl").read_text().splitlines()
    rows.insert(2, json.dumps({"file_name": "corrupt.png", "text": "a small red circle"}))
    rows.insert(5, json.dumps({"file_name": "gone.png", "text": "a large blue square"}))
    rows.append(json.dumps({"file_name": "00000.png"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def sdxl_cache(data: Path, sdxl_teacher: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CacheSummary]:
    out = tmp_path_factory.mktemp("caches") / "sdxl"
    return out, build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)


def _metadata(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]


def _shards(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(path) for path in sorted(out.glob("shard-*.safetensors"))]


def test_counts_rows_shards_and_skip_reasons(sdxl_cache: tuple[Path, CacheSummary]) -> None:
    out, summary = sdxl_cache
    assert (summary.n_written, summary.n_skipped, summary.n_total, summary.shards) == (10, 3, 13, 3)
    assert summary.skipped_reasons == {"unreadable": 1, "missing": 1, "no_text": 1}
    assert (summary.kind, summary.resumed, summary.n_encoded) == ("sdxl", False, 10)
    meta = json.loads((out / "cache.json").read_text())
    assert [s["n"] for s in meta["shards"]] == [4, 4, 2]
    assert meta["complete"] and meta["n"] == 10 and meta["resolution"] == 32 and meta["latent_shape"] == [4, 8, 8]
    assert meta["scaling_factor"] == pytest.approx(0.7)
    assert sorted(p.name for p in out.iterdir()) == ["cache.json", *(f"shard-0000{i}.safetensors" for i in range(3))]
    index = torch.cat([s["index"] for s in _shards(out)])
    assert index.dtype == torch.int64 and index.tolist() == [0, 1, 3, 4, 6, 7, 8, 9, 10, 11]


@torch.no_grad()
def test_rows_equal_what_the_pipeline_computes(
    sdxl_cache: tuple[Path, CacheSummary], data: Path, sdxl_teacher: str
) -> None:
    out, _ = sdxl_cache
    cache = LatentCache(out)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_teacher, torch_dtype=torch.float32)
    rows = _metadata(data)
    for i in (0, 3, 9):
        row = rows[cache.source_row(i)]
        item = cache[i]
        pixels = np.asarray(Image.open(data / row["file_name"]).convert("RGB"), dtype=np.float32) / 127.5 - 1
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        expected = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
        torch.testing.assert_close(item["latents"], expected[0], atol=1e-5, rtol=1e-4)
        embeds, _, pooled, _ = pipe.encode_prompt(row["text"], device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(item["prompt_embeds"], embeds[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(item["pooled_prompt_embeds"], pooled[0], atol=1e-5, rtol=1e-4)
        assert item["time_ids"].tolist() == [32, 32, 0, 0, 32, 32]


def test_the_cache_never_loads_the_unet(sdxl_cache: tuple[Path, CacheSummary], data: Path, sdxl_teacher: str,
                                       tmp_path: Path) -> None:  # fmt: skip
    """Encoding needs the VAE and the text encoders only (SDXL's UNet would be 10 GB more in fp32)."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(sdxl_teacher, teacher)
    weights = [f for f in (teacher / "unet").iterdir() if f.name != "config.json"]
    assert weights
    for f in weights:
        f.unlink()
    out = tmp_path / "cache"
    summary = build_cache(data, Teacher.resolve(str(teacher)), out, batch_size=3, shard_size=4, progress=False)
    assert summary.n_written == 10 and json.loads((out / "cache.json").read_text())["resolution"] == 32
    for a, b in zip(_shards(sdxl_cache[0]), _shards(out), strict=True):
        torch.testing.assert_close(a["latents"], b["latents"], atol=1e-5, rtol=1e-4)


def test_latent_cache_shapes_and_dataloader(sdxl_cache: tuple[Path, CacheSummary]) -> None:
    cache = LatentCache(sdxl_cache[0])
    assert len(cache) == 10 and cache.meta["kind"] == "sdxl"
    shapes = {k: tuple(v.shape) for k, v in cache[-1].items()}
    assert shapes == {"latents": (4, 8, 8), "prompt_embeds": (16, 96), "pooled_prompt_embeds": (64,), "time_ids": (6,)}
    assert all(v.dtype == torch.float32 for v in cache[0].values())
    with pytest.raises(IndexError):
        cache[10]
    loader = torch.utils.data.DataLoader(pickle.loads(pickle.dumps(cache)), batch_size=4, shuffle=True)
    batches = list(loader)
    assert [len(b["latents"]) for b in batches] == [4, 4, 2]
    assert batches[0]["time_ids"].shape == (4, 6)


def test_sd1_teacher_has_no_pooled_or_time_ids(data: Path, sd_teacher: str, tmp_path: Path) -> None:
    summary = build_cache(data, Teacher.resolve(sd_teacher), tmp_path / "sd", batch_size=4, progress=False)
    assert (summary.kind, summary.n_written, summary.shards) == ("sd", 10, 1)
    cache = LatentCache(tmp_path / "sd")
    assert set(cache[0]) == {"latents", "prompt_embeds"} and cache[0]["prompt_embeds"].shape == (16, 32)
    assert set(_shards(tmp_path / "sd")[0]) == {"latents", "prompt_embeds", "index"}
    pipe = StableDiffusionPipeline.from_pretrained(sd_teacher, torch_dtype=torch.float32)
    row = _metadata(data)[cache.source_row(4)]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(row["text"], "cpu", 1, False)
    torch.testing.assert_close(cache[4]["prompt_embeds"], embeds[0], atol=1e-5, rtol=1e-4)


def _counting_encoder(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[int]:
    """Record the metadata rows the encoder sees; raise instead of encoding batch number ``fail_after`` + 1."""
    seen: list[int] = []
    calls: list[int] = []

    def encode(pipe: Any, kind: Any, items: list[Any]) -> dict[str, torch.Tensor]:
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(len(items))
        seen.extend(item.index for item in items)
        return ENCODE_BATCH(pipe, kind, items)

    monkeypatch.setattr(cache_mod, "_encode_batch", encode)
    return seen


def _assert_same_cache(a: Path, b: Path) -> None:
    for x, y in zip(_shards(a), _shards(b), strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    ma, mb = (json.loads((p / "cache.json").read_text()) for p in (a, b))
    assert ma["shards"] == mb["shards"] and ma["skipped"] == mb["skipped"]


def test_interrupted_run_resumes_after_last_complete_shard(
    sdxl_cache: tuple[Path, CacheSummary],
    data: Path,
    sdxl_teacher: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "cache"
    _counting_encoder(monkeypatch, fail_after=2)  # batches of 3 in shards of 4: [3, 1] [dies here]
    with pytest.raises(KeyboardInterrupt):
        build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    meta = json.loads((out / "cache.json").read_text())
    assert [s["n"] for s in meta["shards"]] == [4] and not meta["complete"]
    with pytest.raises(PrunerError, match="incomplete"):
        LatentCache(out)
    (out / ".shard-00001.safetensors.tmp").write_bytes(b"half a shard")
    seen = _counting_encoder(monkeypatch)
    summary = build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    assert summary.resumed and summary.n_encoded == 6 and summary.n_written == 10
    assert min(seen) > 4  # rows 0-4 (four images, one corrupt) are in shard 0 and were not encoded again
    assert summary.skipped_reasons == {"unreadable": 1, "missing": 1, "no_text": 1}
    assert not list(out.glob("*.tmp"))
    _assert_same_cache(out, sdxl_cache[0])


def test_deleted_shard_is_rebuilt_and_complete_cache_is_kept(
    data: Path, sdxl_teacher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, reference = tmp_path / "cache", tmp_path / "reference"
    build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    shutil.copytree(out, reference)
    (out / "shard-00001.safetensors").unlink()
    seen = _counting_encoder(monkeypatch)
    summary = build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    assert summary.resumed and sorted(seen) == [6, 7, 8, 9, 10, 11]  # shards 1 and 2 again, shard 0 kept
    _assert_same_cache(out, reference)
    seen.clear()
    again = build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    assert again.resumed and again.n_encoded == 0 and not seen and again.n_written == 10


def test_mismatching_rerun_names_the_difference(
    sdxl_cache: tuple[Path, CacheSummary], data: Path, sdxl_teacher: str, sd_teacher: str, tmp_path: Path
) -> None:
    out = sdxl_cache[0]
    with pytest.raises(PrunerError, match=r"made with resolution 32, not 64; .*delete"):
        build_cache(data, Teacher.resolve(sdxl_teacher), out, resolution=64, progress=False)
    with pytest.raises(PrunerError, match="made with teacher"):
        build_cache(data, Teacher.resolve(sd_teacher), out, progress=False)
    other = tmp_path / "other"
    write_dataset(other, 2, seed=1, progress=False)
    with pytest.raises(PrunerError, match="made with data folder"):
        build_cache(other, Teacher.resolve(sdxl_teacher), out, progress=False)
    assert len(LatentCache(out)) == 10  # untouched


def test_float16_storage_keeps_time_ids_exact(sdxl_teacher: str, tmp_path: Path) -> None:
    write_dataset(data := tmp_path / "data", 2, seed=2, progress=False)
    build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path / "out", dtype="float16", progress=False)
    item = LatentCache(tmp_path / "out")[1]
    half = torch.float16
    expected = {"latents": half, "prompt_embeds": half, "pooled_prompt_embeds": half, "time_ids": torch.float32}
    assert {k: v.dtype for k, v in item.items()} == expected
    with pytest.raises(PrunerError, match="made with dtype float16, not float32"):
        build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path / "out", progress=False)


def test_changed_metadata_is_refused(sdxl_teacher: str, tmp_path: Path) -> None:
    write_dataset(data := tmp_path / "data", 2, seed=2, progress=False)
    build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path / "out", progress=False)
    with (data / "metadata.jsonl").open("a") as meta:
        meta.write(json.dumps({"file_name": "00000.png", "text": "a small red circle"}) + "\n")
    with pytest.raises(PrunerError, match=r"the data .* changed since the cache"):
        build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path / "out", progress=False)


def test_user_errors(data: Path, sdxl_teacher: str, tmp_path: Path) -> None:
    with pytest.raises(PrunerError, match="not a cache made by `pruner cache`"):
        LatentCache(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PrunerError, match=r"not empty and holds no cache\.json"):
        build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path, progress=False)
    with pytest.raises(PrunerError, match=r"has no metadata\.jsonl"):
        build_cache(tmp_path, Teacher.resolve(sdxl_teacher), tmp_path / "out", progress=False)
    with pytest.raises(PrunerError, match="does not exist"):
        build_cache(tmp_path / "nowhere", Teacher.resolve(sdxl_teacher), tmp_path / "out", progress=False)
    with pytest.raises(PrunerError, match="multiple of the VAE's factor 4"):
        build_cache(data, Teacher.resolve(sdxl_teacher), tmp_path / "out", resolution=30, progress=False)


@pytest.mark.parametrize(
    ("size", "expected"), [((48, 40), (40, 48, 0, 3, 32, 32)), ((40, 80), (80, 40, 16, 0, 32, 32))]
)
def test_load_image_resizes_shorter_side_and_centre_crops(
    tmp_path: Path, size: tuple[int, int], expected: tuple[int, ...]
) -> None:
    path = tmp_path / "image.png"
    Image.new("L", size, 200).save(path)  # grey, not RGB: converted
    pixels, time_ids = load_image(path, 32)
    assert pixels.shape == (3, 32, 32) and time_ids == expected
    torch.testing.assert_close(pixels, torch.full_like(pixels, 200 / 127.5 - 1), atol=1e-5, rtol=0)


def test_processes_that_need_the_bundled_set_at_once_build_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started together on the bundled teacher share one build of its set (a lock file), instead of
    writing the same folders at once (the second writer used to fail: the folder exists)."""
    import threading
    import time

    import pruner.data.bundled as data_mod
    import pruner.tiny.synth as synth

    writes: list[Path] = []

    def slow_write(out: Path, n: int, seed: int, progress: bool = True) -> dict[str, Any]:
        writes.append(out)
        time.sleep(0.3)  # long enough for the other thread to look while this one writes
        return write_dataset(out, n, seed, progress=progress)

    monkeypatch.setattr(synth, "write_dataset", slow_write)
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(data_mod.tiny_sdxl_cache(Teacher.resolve("tiny-sdxl"), n=6, progress=False))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path), results
    assert len(writes) == 1 and len(LatentCache(results[0])) == 6


def test_the_vae_slices_only_when_a_whole_batch_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 pictures at 1024 px need about 50 GiB of VAE activations: too much for a 24 GiB card, not for an H200."""
    import pruner.device
    from pruner.data.cache import vae_batch_too_big

    cuda = torch.device("cuda")
    monkeypatch.setattr(pruner.device, "free_memory", lambda device: 24 * 2**30)
    assert vae_batch_too_big(16, 1024, cuda)
    assert not vae_batch_too_big(16, 512, cuda) and not vae_batch_too_big(1, 1024, cuda)
    monkeypatch.setattr(pruner.device, "free_memory", lambda device: 139 * 2**30)
    assert not vae_batch_too_big(16, 1024, cuda)


def test_the_cache_encodes_without_autograd_and_slicing_keeps_the_latents(
    sdxl_cache: tuple[Path, CacheSummary], data: Path, sdxl_teacher: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The encoders' parameters require grad as loaded: the cache must not keep each batch's activations for a
    backward pass that never comes (at 1024 px that filled an H200). Encoding one picture at a time, as a small
    device gets, writes the same latents."""
    import diffusers

    import pruner.data.cache

    seen: list[tuple[bool, bool]] = []
    encode = diffusers.AutoencoderKL.encode

    def spy(self: diffusers.AutoencoderKL, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append((torch.is_grad_enabled(), self.use_slicing))
        return encode(self, x, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoencoderKL, "encode", spy)
    monkeypatch.setattr(pruner.data.cache, "vae_batch_too_big", lambda *args: True)
    out = tmp_path / "sliced"
    build_cache(data, Teacher.resolve(sdxl_teacher), out, batch_size=3, shard_size=4, progress=False)
    assert seen and all(flags == (False, True) for flags in seen), seen
    for a, b in zip(_shards(sdxl_cache[0]), _shards(out), strict=True):
        torch.testing.assert_close(a["latents"], b["latents"], atol=1e-5, rtol=1e-4)
