"""Shared fixtures: tiny UNets with SDXL and SD 1.5 topology, seeded, and an isolated cost cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers/huggingface_hub read it
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel

torch.set_num_threads(1)  # on 2-core machines thread wake-ups cost more than they give on tiny models

from pruner.unet import Plan, Topology, nearest_expressible, unit_kinds  # noqa: E402

TINY_SDXL: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "attention_head_dim": [2, 4, 8],
    "block_out_channels": [32, 64, 128],
    "cross_attention_dim": 32,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
    "sample_size": 8,
    "transformer_layers_per_block": [1, 2, 3],
    "use_linear_projection": True,
}
TINY_SD15: dict[str, Any] = {
    "attention_head_dim": 2,
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "sample_size": 16,
}
SEQ = 7  # tokens in the tiny prompts


def make_unet(config: dict[str, Any], seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong copy cannot hide
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def unet_inputs(config: dict[str, Any], latent: int, batch: int = 1, seed: int = 0) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(seed)
    args = (torch.randn(batch, 4, latent, latent, generator=g), torch.tensor([500] * batch),
            torch.randn(batch, SEQ, config["cross_attention_dim"], generator=g))  # fmt: skip
    kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text, generator=g),
            "time_ids": torch.randn(batch, 6, generator=g),
        }
    return args, kwargs


def random_plans(topo: Topology, n: int, seed: int, p: float = 0.3) -> list[Plan]:
    """Random expressible plans, removal probability ``p`` per unit."""
    rng = random.Random(seed)
    names = list(unit_kinds(topo))
    return [nearest_expressible(Plan(frozenset(x for x in names if rng.random() < p)), topo) for _ in range(n)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test process has a pruner cache of its own (cost tables, features on disk), except the bundled
    teacher's synthesised set (``data/``, 40 s to make), which the processes of one xdist run share: the first
    that needs it builds it under its lock, the others wait and read it."""
    base = tmp_path_factory.getbasetemp()
    root = base / "pruner-cache"
    monkeypatch.setenv("PRUNER_CACHE_DIR", str(root))
    if not (root / "data").exists():
        run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # gw0, gw1, ... under one run
        (run / "pruner-data").mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").symlink_to(run / "pruner-data", target_is_directory=True)


@pytest.fixture(scope="session")
def tiny_sdxl() -> UNet2DConditionModel:
    return make_unet(TINY_SDXL)


@pytest.fixture(scope="session")
def tiny_sd15() -> UNet2DConditionModel:
    return make_unet(TINY_SD15)


@pytest.fixture(params=["sdxl", "sd15"])
def tiny_unet(request: pytest.FixtureRequest, tiny_sdxl, tiny_sd15) -> UNet2DConditionModel:  # type: ignore[no-untyped-def]
    return tiny_sdxl if request.param == "sdxl" else tiny_sd15


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_sdxl: UNet2DConditionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "tiny-sdxl-unet"
    tiny_sdxl.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sdxl_pipeline(root: Path, scaling_factor: float = 0.7) -> str:
    """A random-weight SDXL pipeline of the bundled teacher's shape (32 px, 4x VAE, two encoders), saved."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pruner.tiny.text import build_text_encoders, build_tokenizer
    from pruner.tiny.train import build_unet, build_vae

    torch.manual_seed(0)
    vae = build_vae().eval()
    vae.register_to_config(scaling_factor=scaling_factor)  # not 1, so a missing scale cannot hide
    tokenizers = (build_tokenizer(root / "tok"), build_tokenizer(root / "tok"))
    first, second = build_text_encoders(len(tokenizers[0]), seed=0)
    parts = {"vae": vae, "text_encoder": first, "text_encoder_2": second, "tokenizer": tokenizers[0]}
    parts |= {"tokenizer_2": tokenizers[1], "unet": build_unet(0), "scheduler": EulerDiscreteScheduler()}
    pipe = StableDiffusionXLPipeline(**parts)
    pipe.save_pretrained(root / "pipe")
    return str(root / "pipe")


@pytest.fixture(scope="session")
def tiny_sdxl_pipeline(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl-pipeline"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small latent cache of the tiny pipeline (24 captioned pictures), for searches."""
    from typer.testing import CliRunner

    from pruner.cli import app

    root = tmp_path_factory.mktemp("search-data")
    runner = CliRunner()
    assert runner.invoke(app, ["synth-data", "--out", str(root / "data"), "--n", "24"]).exit_code == 0
    made = runner.invoke(app, ["cache", str(root / "data"), "--teacher", tiny_sdxl_pipeline, "--out", str(root / "c")])
    assert made.exit_code == 0, made.output
    return root / "c"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own (initdb + pg_ctl in a temporary folder, a free localhost port), stopped
    at the end of the session."""
    from pruner.study.pgtemp import TempPostgres, postgres_bin

    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine: apt-get install postgresql")
    with TempPostgres() as server:
        yield server.url()
