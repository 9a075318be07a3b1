from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from pruner.tiny.train import TrainConfig, train_teacher

SHORT = TrainConfig(n_images=600, vae_steps=4, unet_steps=4, judge_steps=4, vae_batch=8, unet_batch=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One short training run (about 25 s), shared: the pipeline test reads it, the reproducibility test
    trains the same config again and compares."""
    root = tmp_path_factory.mktemp("trained")
    return root / "teacher", train_teacher(root / "teacher", SHORT)


@pytest.mark.slow
def test_training_script_writes_a_pipeline_stock_diffusers_runs(trained: tuple[Path, dict[str, Any]]) -> None:
    folder, figures = trained
    assert set(figures) >= {"vae_psnr_db", "unet_final_loss_ema", "judge_heldout", "minutes"}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["teacher"]  # no partial folders left behind
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert next(pipe.unet.parameters()).dtype == torch.float32
    image = pipe("a large blue square above a small white triangle on a black background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (32, 32)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor the pipeline folder (and its judge) stores, keyed by file and name."""
    from safetensors.torch import load_file

    files = sorted(folder.rglob("*.safetensors"))
    return {f"{f.relative_to(folder)}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.slow
def test_training_is_reproducible_from_a_seed(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    folder, first = trained
    second = train_teacher(tmp_path / "b", SHORT)
    other = train_teacher(tmp_path / "c", TrainConfig(**{**SHORT.__dict__, "seed": 1}))
    a, b, c = _weights(folder), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert {k: v for k, v in first.items() if k != "minutes"} == {k: v for k, v in second.items() if k != "minutes"}
    changed = {k.split("/")[0] for k in a if not torch.equal(a[k], c[k])}
    assert changed >= {"unet", "vae", "judge"}  # the seed reaches every trained part
    assert other["vae_psnr_db"] != first["vae_psnr_db"] or other["unet_final_loss_ema"] != first["unet_final_loss_ema"]


def test_training_config_refuses_a_set_too_small_to_hold_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="--n-images 513 or more"):
        TrainConfig(n_images=512)
    with pytest.raises(ValueError, match="unet_steps=0"):
        TrainConfig(unet_steps=0)
