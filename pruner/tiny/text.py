"""The tiny teacher's two tokenizers and text encoders, built offline from the caption grammar.

SDXL conditions on two CLIP text encoders: the penultimate hidden states of both, concatenated, feed
cross-attention, and the second one's projected pooled output feeds the added ``text_time`` embedding.
The tiny teacher keeps that shape with small widths. The encoders keep their seeded random weights
(frozen): distinct captions give distinct embeddings, and the UNet learns to read them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pruner.tiny.synth import VOCABULARY

__all__ = ["MAX_TOKENS", "build_text_encoders", "build_tokenizer", "tokenizer_files"]

MAX_TOKENS = 16  # the longest caption is 14 words; every word is one token
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: merge the best-ranked adjacent pair until none applies."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), len(ranks) + 1), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def tokenizer_files(words: Sequence[str] = VOCABULARY) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in CLIP's format such that every word is exactly one token.

    Merges are added one at a time, each ranked after all earlier ones, for the first pair a word
    still splits into: a merge ranked last only applies where nothing else does, so it never changes
    a word that already tokenizes whole.
    """
    chars = sorted({c for w in words for c in w})
    tokens = [*chars, *(c + "</w>" for c in chars)]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
            if parts[0] + parts[1] not in tokens:
                tokens.append(parts[0] + parts[1])
    tokens += [_BOS, _EOS]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt to ``folder`` and load them as a CLIPTokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS, pad_token=_EOS
    )
    for word in VOCABULARY:  # one token per word keeps every caption within MAX_TOKENS
        ids = tok(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {word!r} into {len(ids)} tokens")
    return tok


def _encoder_config(vocab_size: int, hidden: int, layers: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def build_text_encoders(vocab_size: int, seed: int) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """SDXL's pair of encoders at tiny widths (32 and 64; pooled projection 64), seeded and frozen."""
    torch.manual_seed(seed)
    first = CLIPTextModel(_encoder_config(vocab_size, 32, 3, 32)).eval().requires_grad_(False)
    second = CLIPTextModelWithProjection(_encoder_config(vocab_size, 64, 3, 64)).eval().requires_grad_(False)
    return first, second
