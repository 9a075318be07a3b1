from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pruner.diffusion import added_cond, default_resolution, image_grid, noise_batch, sdxl_scheduler, time_ids


def test_one_seed_noises_a_batch_the_same_way_every_time() -> None:
    latents = torch.randn(3, 4, 8, 8)
    a = noise_batch(sdxl_scheduler(), latents, torch.Generator().manual_seed(5))
    b = noise_batch(sdxl_scheduler(), latents, torch.Generator().manual_seed(5))
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.timesteps, b.timesteps)
    alpha = sdxl_scheduler().alphas_cumprod[a.timesteps][:, None, None, None]
    assert torch.allclose(a.noisy, alpha.sqrt() * latents + (1 - alpha).sqrt() * a.noise, atol=1e-5)


def test_sdxl_conditioning_has_pooled_embeds_and_time_ids_and_sd1_has_none() -> None:
    ids = time_ids(1024, 2)
    assert ids.tolist() == [[1024, 1024, 0, 0, 1024, 1024]] * 2
    assert set(added_cond(torch.zeros(2, 8), ids) or {}) == {"text_embeds", "time_ids"}
    assert added_cond(None, None) is None


def test_default_resolution_is_the_latent_size_times_the_vae_scale() -> None:
    assert default_resolution({"sample_size": 128}) == 1024
    assert default_resolution({"sample_size": 8}) == 64


def test_a_grid_puts_each_caption_under_its_column(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    plain = image_grid([[red, blue], [blue, red]], tmp_path / "plain.png", scale=4)
    captioned = image_grid([[red, blue], [blue, red]], tmp_path / "captioned.png", captions=["a red one", "blue"],
                           row_labels=["teacher", "student"], scale=4)  # fmt: skip
    a, b = Image.open(plain), Image.open(captioned)
    assert a.size == (64, 64)
    assert b.height > 64 and b.width > 64  # a caption strip below, a label column to the left
    strip = b.crop((b.width - 64, 64, b.width, b.height)).convert("L")
    assert min(strip.getdata()) < 128  # text was drawn under the pictures
    assert not list(tmp_path.glob(".*partial"))
