"""Preference scores: models trained on people's choices between generated pictures, each run by its own
library, as the papers that report them run it.

- ``pickscore``: PickScore (Kirstain et al. 2023), a CLIP-H fine-tuned on Pick-a-Pic's choices, by transformers:
  ``exp(logit_scale)`` times the cosine of the picture's and the prompt's embeddings, as the published code
  scores (about 20-23 for SDXL's pictures). Model ``yuvalkirstain/PickScore_v1`` with the processor of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the published recipe). LAPTOP-Diff reports it.
- ``imagereward``: ImageReward (Xu et al. 2023), BLIP with a reward head, by the ``image-reward`` package
  (``ImageReward.load``, then ``model.score(prompt, picture)``): standardised, about -2 to 2.
- ``hpsv2``: HPSv2 (Wu et al. 2023), a CLIP-H fine-tuned on HPD v2, by the ``hpsv2`` package: the picture's
  and the prompt's normalised features multiplied, as ``hpsv2.score`` does (about 0.2-0.3; its benchmark
  tables print 100 times that). KOALA reports it.

ImageReward and HPSv2 come with the extra ``pruner[preference]``; their packages require torchvision (and
ImageReward timm 0.6.13), so they are not in ``dev``, whose torch is pinned. Each model is read from a path or
fetched by name; one that is missing is one line naming it and how to provide it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F

from pruner.errors import PrunerError, first_line
from pruner.metrics.features import offline

__all__ = [
    "HPS_BASE",
    "HPS_VERSIONS",
    "IMAGEREWARD",
    "PICKSCORE",
    "PICKSCORE_PROCESSOR",
    "PREFERENCE",
    "PREFERENCE_DEFAULTS",
    "Preference",
    "load_preference",
    "pickscore",
]

PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
IMAGEREWARD = "ImageReward-v1.0"  # image-reward's name for THUDM/ImageReward's ImageReward.pt
HPS_VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # files of the Hub's xswu/HPSv2
HPS_BASE = ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_pytorch_model.bin")  # what hpsv2 builds on first
PREFERENCE_DEFAULTS = {"pickscore": PICKSCORE, "imagereward": IMAGEREWARD, "hpsv2": "v2.1"}
PREFERENCE = tuple(PREFERENCE_DEFAULTS)  # the metric names, as evaluate(metrics=) takes them
_EXTRA = "pip install 'pruner[preference]'"


@dataclass(frozen=True)
class Preference:
    """A loaded preference model: its metric name, what it was loaded from (recorded beside its scores), and
    ``score(pictures, prompts)``, one score per picture for its own prompt."""

    name: str
    model: str
    score: Callable[[Sequence[Image.Image], Sequence[str]], list[float]]

    def mean(self, pictures: Sequence[Image.Image], prompts: Sequence[str]) -> float:
        """The mean score over the pictures, the figure the papers report."""
        if len(pictures) != len(prompts):
            raise ValueError(f"{len(pictures)} pictures for {len(prompts)} prompts")
        scores = self.score(pictures, prompts)
        return float(sum(scores) / len(scores))


def load_preference(metric: str, model: str | None = None, stand_in: Path | None = None) -> Preference:
    """The preference model of ``metric`` from ``model`` (hub id, folder, file or version; None: the published
    one, or for PickScore ``stand_in``, a CLIP folder of the teacher's world), loaded now: a missing package or
    model is refused before anything is drawn."""
    loaders: dict[str, Callable[[str], Preference]] = {
        "pickscore": load_pickscore, "imagereward": load_imagereward, "hpsv2": load_hpsv2,
    }  # fmt: skip
    if metric not in loaders:
        raise PrunerError(f"{metric} is not a preference score; use one of {', '.join(loaders)}")
    if model is None and metric == "pickscore" and stand_in is not None:
        model = str(stand_in)
    return loaders[metric](model or PREFERENCE_DEFAULTS[metric])


def _device() -> torch.device:
    """Where the preference models run: a GPU when there is one, as image-reward and hpsv2 choose themselves."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """The libraries print as they load ("load checkpoint from ..."): to stderr, so `--json` stays one object."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# PickScore -----------------------------------------------------------------------------------------------------


def load_pickscore(where: str) -> Preference:
    """PickScore's CLIP from a hub id or folder, with the folder's own processor when it holds one, else
    ``PICKSCORE_PROCESSOR`` (the published recipe: PickScore_v1 was fine-tuned from that CLIP-H)."""
    from pruner.metrics.clip import load_clip

    folder = Path(where)
    own = any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json"))
    model = load_clip(where, processor=where if own else PICKSCORE_PROCESSOR, knob="pickscore_model")
    return Preference("pickscore", where, partial(pickscore, model))


@torch.no_grad()
def pickscore(
    model: tuple[Any, Any], pictures: Sequence[Image.Image], prompts: Sequence[str], batch: int = 32
) -> list[float]:
    """PickScore of each picture for its prompt: ``exp(logit_scale) * cos(image, text)`` of a (``load_clip``)
    CLIP and processor, prompts truncated at 77 tokens (or the model's length when shorter)."""
    clip, processor = model
    device = _device()
    clip.to(device)
    length = min(77, int(processor.tokenizer.model_max_length))
    scale = clip.clip.logit_scale.exp()
    scores: list[float] = []
    for start in range(0, len(prompts), batch):
        images = processor(images=[p.convert("RGB") for p in pictures[start : start + batch]], return_tensors="pt")
        texts = processor(text=list(prompts[start : start + batch]), padding=True, truncation=True,
                          max_length=length, return_tensors="pt")  # fmt: skip
        image = F.normalize(clip.get_image_features(pixel_values=images["pixel_values"].to(device)), dim=-1)
        text = F.normalize(clip.get_text_features(**{k: v.to(device) for k, v in texts.items()}), dim=-1)
        scores += (scale * (image * text).sum(-1)).float().cpu().tolist()
    return scores


# ImageReward and HPSv2: their own packages ---------------------------------------------------------------------


def _package(module: str, package: str, metric: str) -> ModuleType:
    """``import module``; missing, one line naming the package and the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PrunerError(
            f"{metric} needs the {package} package ({first_line(exc)}): {_EXTRA} (it brings torchvision, which may "
            "replace a pinned torch: use an environment of its own)"
        ) from None


def _imagereward_files(where: str) -> tuple[Path, Path] | None:
    """The checkpoint and ``med_config.json`` of ``where``: a checkpoint file (the config beside it), a folder
    holding both, or the name ``ImageReward-v1.0`` when image-reward's cache holds both; None: to download."""
    path = Path(where).expanduser()
    if where == IMAGEREWARD:
        path = Path.home() / ".cache" / "ImageReward"  # image-reward's download_root
    checkpoint = path / "ImageReward.pt" if path.is_dir() or where == IMAGEREWARD else path
    config = checkpoint.parent / "med_config.json"
    if checkpoint.is_file() and config.is_file():
        return checkpoint, config
    if where != IMAGEREWARD or offline():
        off = "; downloads are off" if offline() else ""
        raise PrunerError(
            f"ImageReward weights {where} are not on this machine (no {checkpoint} with {config.name} beside it{off}):"
            " run `hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir DIR` where the Hub is "
            "reachable, then pass imagereward_model= DIR"
        )
    return None


def load_imagereward(where: str) -> Preference:
    """ImageReward by ``ImageReward.load``: from a checkpoint file or folder (with ``med_config.json``), or by its
    name, downloaded into image-reward's cache when not there yet."""
    reward = _package("ImageReward", "image-reward", "imagereward")
    files = _imagereward_files(where)
    name, kwargs = (IMAGEREWARD, {}) if files is None else (str(files[0]), {"med_config": str(files[1])})
    try:
        with _quiet_stdout():
            model = reward.load(name, device=str(_device()), **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # its BLIP's tokenizer (bert-base-uncased) is a download too
        raise PrunerError(
            f"ImageReward could not load from {where}: {first_line(exc)}; download what it names where the Hub is "
            "reachable (`hf download bert-base-uncased` for its tokenizer)"
        ) from None

    @torch.no_grad()
    def score(pictures: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return [float(model.score(prompt, picture)) for picture, prompt in zip(pictures, prompts, strict=True)]

    return Preference("imagereward", str(files[0]) if files else where, score)


def _hps_checkpoint(where: str) -> Path:
    """HPSv2's checkpoint: a file, or a version (v2.0, v2.1) from the Hub's ``xswu/HPSv2`` (cached or fetched);
    the open_clip CLIP-H hpsv2 builds first must be cached or fetchable too."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if where not in HPS_VERSIONS:
        if not Path(where).expanduser().is_file():
            raise PrunerError(f"hpsv2_model= {where} is neither a checkpoint file nor one of {', '.join(HPS_VERSIONS)}")
        checkpoint = Path(where).expanduser()
    else:
        try:
            checkpoint = Path(hf_hub_download("xswu/HPSv2", HPS_VERSIONS[where]))
        except Exception as exc:  # offline, unreachable, not found: huggingface_hub raises several kinds
            why = "downloads are off" if offline() else first_line(exc)
            raise PrunerError(
                f"HPSv2 {where} weights are not on this machine ({why}): run `hf download xswu/HPSv2 "
                f"{HPS_VERSIONS[where]}` where the Hub is reachable, or pass hpsv2_model= that file"
            ) from None
    if offline() and not isinstance(try_to_load_from_cache(*HPS_BASE), str):
        raise PrunerError(
            f"HPSv2 builds on {HPS_BASE[0]}, which is not cached and downloads are off: run `hf download "
            f"{HPS_BASE[0]} {HPS_BASE[1]}` where the Hub is reachable"
        )
    return checkpoint


def load_hpsv2(where: str) -> Preference:
    """HPSv2 by the ``hpsv2`` package: its CLIP-H and preprocessing (``hpsv2.img_score``), the checkpoint of
    ``where`` read once (``hpsv2.score`` reads it again for every call), scored as ``hpsv2.score`` scores."""
    _package("hpsv2", "hpsv2", "hpsv2")
    checkpoint = _hps_checkpoint(where)
    from hpsv2 import img_score
    from hpsv2.src.open_clip import get_tokenizer

    with _quiet_stdout():
        img_score.initialize_model()
    model, preprocess = img_score.model_dict["model"], img_score.model_dict["preprocess_val"]
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    device = torch.device(img_score.device)
    model.to(device).eval()
    tokenizer = get_tokenizer("ViT-H-14")

    @torch.no_grad()
    def score(pictures: Sequence[Image.Image], prompts: Sequence[str], batch: int = 16) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(prompts), batch):
            images = torch.stack([preprocess(p) for p in pictures[start : start + batch]]).to(device)
            texts = tokenizer(list(prompts[start : start + batch])).to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = model(images, texts)
            scores += (out["image_features"] * out["text_features"]).sum(-1).float().cpu().tolist()
        return scores

    return Preference("hpsv2", str(checkpoint), score)
