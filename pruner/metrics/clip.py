"""CLIP score of pictures against their prompts, by torchmetrics' ``CLIPScore`` on a transformers CLIP.

The default model is ``openai/clip-vit-large-patch14``: what diffusers' evaluation guide and torchmetrics'
``CLIPScore`` use by default, so the figure compares with theirs. BK-SDM reports CLIP score with open_clip's
ViT-g-14 (LAION-2B), which needs the open_clip package; its figures are on another scale. On the bundled
teacher the default is its own small CLIP of the shape world (``pruner.tiny.clip``), which reads its captions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pruner.errors import PrunerError, first_line
from pruner.metrics.features import offline

__all__ = ["DEFAULT_CLIP", "ClipScore", "clip_score", "load_clip"]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def load_clip(
    name_or_path: str | Path, processor: str | Path | None = None, knob: str = "clip_model"
) -> tuple[Any, Any]:
    """A transformers ``CLIPModel`` and its ``CLIPProcessor`` from a hub id or a folder (both saved there, or the
    processor from ``processor``); one that is neither here nor downloadable is one line saying how to provide
    it, through the option ``knob`` (the CLIP score's ``clip_model=``, PickScore's ``pickscore_model=``)."""
    from transformers import CLIPModel, CLIPProcessor

    where = str(name_or_path)
    model = _pretrained(CLIPModel, where, "CLIP model", knob)
    return _Embeddings(model.eval()), _pretrained(CLIPProcessor, str(processor or where), "CLIP processor", knob)


def _pretrained(cls: Any, where: str, what: str, knob: str) -> Any:
    """``cls.from_pretrained(where)``; a missing or unreadable one is one line naming it and the fix."""
    try:
        return cls.from_pretrained(where)
    except (OSError, ValueError) as exc:
        said = first_line(exc)
        if Path(where).exists():
            raise PrunerError(f"{knob}= {where} is not a CLIP folder (config, weights and processor): {said}") from None
        how = "downloads are off (HF_HUB_OFFLINE=1)" if offline() else f"it could not be fetched ({said})"
        raise PrunerError(
            f"{what} {where} is not on this machine and {how}: run `hf download {where}` where the Hub is "
            f"reachable, or pass {knob}= a local CLIP folder"
        ) from None


class _Embeddings(torch.nn.Module):
    """A ``CLIPModel`` whose ``get_image_features`` and ``get_text_features`` return the projected embeddings
    as a tensor, as torchmetrics reads them (transformers 5 returns an output object, its ``pooler_output``)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


class ClipScore:
    """The CLIP score of pictures fed batch by batch (``add``, torchmetrics' ``update``), as they are made:
    its running sum is kept, not the pictures; ``result()`` is the mean over every picture fed."""

    def __init__(self, model: tuple[Any, Any]) -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.metric = CLIPScore(model_name_or_path=lambda: model)

    @torch.no_grad()
    def add(self, pictures: torch.Tensor, prompts: Sequence[str]) -> None:
        """uint8 ``pictures`` (N, 3, H, W) and their prompts, one each."""
        if len(pictures) != len(prompts):
            raise ValueError(f"{len(pictures)} pictures for {len(prompts)} prompts")
        with warnings.catch_warnings():  # torchmetrics pads to the longest prompt, and truncates itself
            warnings.filterwarnings("ignore", message=".*max_length. is ignored")
            self.metric.update(pictures, list(prompts))

    def result(self) -> float:
        return float(self.metric.compute())


def clip_score(pictures: torch.Tensor, prompts: Sequence[str], model: tuple[Any, Any], batch: int = 64) -> float:
    """Mean CLIP score (100 x cosine, floored at 0 as torchmetrics does) of uint8 ``pictures`` (N, 3, H, W)
    against ``prompts``, one each."""
    if len(pictures) != len(prompts):
        raise ValueError(f"{len(pictures)} pictures for {len(prompts)} prompts")
    score = ClipScore(model)
    for start in range(0, len(prompts), batch):
        score.add(pictures[start : start + batch], prompts[start : start + batch])
    return score.result()
