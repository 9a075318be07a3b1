from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from pruner.tiny.train import TrainConfig, train_teacher


@pytest.mark.slow
def test_training_script_writes_a_pipeline_stock_diffusers_runs(tmp_path: Path) -> None:
    cfg = TrainConfig(n_images=700, vae_steps=3, unet_steps=3, judge_steps=3, vae_batch=8, unet_batch=8)
    figures = train_teacher(tmp_path / "teacher", cfg)
    assert set(figures) >= {"vae_psnr_db", "unet_final_loss_ema", "judge_heldout", "minutes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no partial folders left behind
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "teacher", torch_dtype=torch.float32)
    assert next(pipe.unet.parameters()).dtype == torch.float32
    image = pipe("a large blue square above a small white triangle on a black background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (32, 32)
