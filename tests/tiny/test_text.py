from __future__ import annotations

from pathlib import Path

import torch

from pruner.tiny.synth import VOCABULARY, caption, sample_scenes
from pruner.tiny.text import MAX_TOKENS, build_text_encoders, build_tokenizer
from pruner.tiny.train import encode_prompts


def test_every_word_is_one_token_and_every_caption_fits(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path)
    for word in VOCABULARY:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1
    assert tok.unk_token_id not in tok(" ".join(VOCABULARY), add_special_tokens=False).input_ids
    longest = max((caption(s) for s in sample_scenes(500, 0)), key=lambda c: len(c.split()))
    assert len(tok(longest).input_ids) <= MAX_TOKENS


def test_sdxl_conditioning_shapes_and_distinct_prompts(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path)
    encoders = build_text_encoders(len(tok), seed=0)
    prompts = [
        "a small red circle on the left on a grey background",
        "a small red circle on the right on a grey background",
    ]
    embeds, pooled = encode_prompts((tok, tok), encoders, prompts)
    assert embeds.shape == (2, MAX_TOKENS, 96) and pooled.shape == (2, 64)
    assert not torch.allclose(embeds[0], embeds[1])
