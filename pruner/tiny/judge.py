"""A judge of prompt accuracy for the synthetic shape scenes of `pruner.tiny.synth`.

Why: to tell whether a (pruned) tiny teacher still draws what it is asked, we need an automatic
check that a generated picture shows every attribute its prompt names. The judge is a small CNN
with one classification head per attribute (background; number of objects; position or relation;
kind, colour and size of each object slot), trained on the generator's own labels with mild noise
and blur so that slightly imperfect generated pictures are still read correctly.

`Judge.score(images, prompts)` parses each prompt back into labels and reports the share of images
where every named attribute is predicted correctly (`prompt_accuracy`) plus per-attribute accuracies.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from pruner.tiny.synth import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    POSITIONS,
    RELATIONS,
    SIZES,
    Scene,
    caption,
    parse_caption,
    render,
    sample_scenes,
)

# One head per attribute; slot 1 is the first object of the caption (the left / upper one).
HEADS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUNDS,
    "count": ("1", "2"),
    "position": POSITIONS,
    "relation": RELATIONS,
    "kind_1": KINDS,
    "colour_1": COLOURS,
    "size_1": SIZES,
    "kind_2": KINDS,
    "colour_2": COLOURS,
    "size_2": SIZES,
}
IGNORE = -100  # target index of attributes a scene does not name (masked out of the loss)
WEIGHTS_FILE = "judge.safetensors"
META_FILE = "judge.json"
FORMAT_VERSION = 1


def scene_targets(scene: Scene) -> dict[str, str]:
    """The attributes a scene's caption names, keyed by head: what a picture of it must show."""
    targets = {"background": scene.background, "count": str(len(scene.objects))}
    if scene.position is not None:
        targets["position"] = scene.position
    if scene.relation is not None:
        targets["relation"] = scene.relation
    for slot, obj in enumerate(scene.objects, start=1):
        targets.update({f"kind_{slot}": obj.kind, f"colour_{slot}": obj.colour, f"size_{slot}": obj.size})
    return targets


class JudgeNet(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4 pixels), a shared hidden layer, one linear head per attribute.

    The 4x4 map is flattened rather than pooled so that the heads can see where things are.
    """

    def __init__(self, heads: dict[str, int], widths: Sequence[int] = (16, 32, 64), hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            for c in (c_in, c_out):
                layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for pictures `x` in [0, 1], shape (N, 3, H, W)."""
        h = self.trunk((x - 0.5) / 0.25)
        return {name: head(h) for name, head in self.heads.items()}


def images_to_tensor(images: Sequence[Image.Image], size: int = 32) -> torch.Tensor:
    """PIL pictures -> float tensor (N, 3, size, size) in [0, 1], resizing any other size."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size, size):
            shrink = image.width > size or image.height > size
            image = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class Judge:
    """A trained `JudgeNet` plus the class names of each head and how it was trained."""

    net: JudgeNet
    heads: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(HEADS))
    size: int = 32
    meta: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image], batch_size: int = 256) -> list[dict[str, str]]:
        """The predicted class name of every head, for each picture."""
        self.net.eval()
        preds: list[dict[str, str]] = []
        for start in range(0, len(images), batch_size):
            logits = self.net(images_to_tensor(images[start : start + batch_size], self.size))
            idx = {name: out.argmax(dim=1).tolist() for name, out in logits.items()}
            for i in range(len(idx["background"])):
                preds.append({name: self.heads[name][col[i]] for name, col in idx.items()})
        return preds

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        """Prompt accuracy (every named attribute right) and per-attribute accuracy of pictures vs prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        targets = [scene_targets(parse_caption(p)) for p in prompts]
        preds = self.predict(images)
        hits = [{k: pred[k] == v for k, v in tgt.items()} for pred, tgt in zip(preds, targets, strict=True)]
        per_attribute = {}
        for name in self.heads:
            named = [h[name] for h in hits if name in h]
            if named:
                per_attribute[name] = sum(named) / len(named)
        prompt_accuracy = sum(all(h.values()) for h in hits) / max(1, len(hits))
        return {"prompt_accuracy": prompt_accuracy, "n": len(hits), "per_attribute": per_attribute}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights (safetensors) and metadata (JSON) into the directory `path`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pruner.tiny.judge"})
        meta = {
            "format_version": FORMAT_VERSION,
            "heads": {k: list(v) for k, v in self.heads.items()},
            "size": self.size,
            **self.meta,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Judge:
        """Read a judge written by `save`."""
        src = Path(path)
        meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{src / META_FILE} has format_version {meta.get('format_version')}, expected 1")
        heads = {k: tuple(v) for k, v in meta.pop("heads").items()}
        size = int(meta.pop("size"))
        meta.pop("format_version")
        net = JudgeNet({k: len(v) for k, v in heads.items()}, meta["widths"], meta["hidden"])
        net.load_state_dict(load_file(str(src / WEIGHTS_FILE)))
        net.eval()
        return cls(net=net, heads=heads, size=size, meta=meta)


# --------------------------------------------------------------------------- training


def _encode_targets(scenes: Sequence[Scene]) -> torch.Tensor:
    """(N, n_heads) class indices, IGNORE where a scene does not name the attribute."""
    names = list(HEADS)
    y = torch.full((len(scenes), len(names)), IGNORE, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for name, value in scene_targets(scene).items():
            y[i, names.index(name)] = HEADS[name].index(value)
    return y


def _render_uint8(scenes: Sequence[Scene], size: int) -> torch.Tensor:
    """Clean renders as a uint8 tensor (N, 3, size, size); compact enough to hold 10^5 in memory."""
    arrays = np.stack([np.asarray(render(s, size), dtype=np.uint8) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruption standing in for generator artefacts: blur, small tone shifts, pixel noise.

    Kept small enough never to change a colour's name or a shape's size class.
    """
    n = x.shape[0]
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    amount = torch.rand(n, 1, 1, 1, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    x = torch.lerp(x, blurred, amount)
    gain = 1 + 0.06 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    shift = 0.04 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    sigma = 0.05 * torch.rand(n, 1, 1, 1, generator=gen)
    x = x * gain + shift + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def _loss(logits: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the cross-entropy on the samples that name that head's attribute."""
    total = logits["background"].new_zeros(())
    for j, name in enumerate(HEADS):
        target = y[:, j]
        if bool((target != IGNORE).any()):
            total = total + F.cross_entropy(logits[name], target, ignore_index=IGNORE)
    return total


def _train_loop(net: JudgeNet, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any], progress: bool) -> float:
    """AdamW with a one-cycle schedule on random minibatches; returns the final smoothed loss."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.15)
    net.train()
    smooth = float("nan")
    bar = tqdm(range(cfg["steps"]), desc="training judge", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(x.shape[0], (cfg["batch_size"],), generator=gen)
        loss = _loss(net(augment(x[idx].float() / 255.0, gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        smooth = loss.item() if step == 0 else 0.98 * smooth + 0.02 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{smooth:.3f}")
    net.eval()
    return smooth


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily fix torch's intra-op thread count (CPU results depend on it bit for bit)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_judge(
    n_train: int = 20000,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    size: int = 32,
    n_eval: int = 2000,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    progress: bool = True,
    threads: int | None = 1,
) -> Judge:
    """Train a judge on `n_train` fresh renders ("judge_train" stream) and measure it on `n_eval` others.

    Deterministic for a seed on CPU. Training runs on `threads` torch threads (restored afterwards):
    the weights depend bit for bit on the thread count, and one thread also avoids oversubscribing
    a small shared machine; None keeps torch's setting. The held-out result (stream "judge_eval")
    is kept in `judge.meta["heldout"]`; pass n_eval=0 to skip it.
    """
    with _torch_threads(threads):
        started = time.perf_counter()
        torch.manual_seed(seed)
        scenes = sample_scenes(n_train, seed, stream="judge_train")
        x, y = _render_uint8(scenes, size), _encode_targets(scenes)
        net = JudgeNet({k: len(v) for k, v in HEADS.items()}, widths, hidden)
        cfg = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr}
        final_loss = _train_loop(net, x, y, cfg, progress)
        train_info = {
            **cfg,
            "n_train": n_train,
            "threads": torch.get_num_threads(),
            "final_loss": round(final_loss, 5),
        }
        train_info["seconds"] = round(time.perf_counter() - started, 1)
        meta: dict[str, Any] = {
            "widths": list(widths),
            "hidden": hidden,
            "parameters": sum(p.numel() for p in net.parameters()),
            "train": train_info,
        }
        judge = Judge(net=net, heads=dict(HEADS), size=size, meta=meta)
        if n_eval > 0:
            meta["heldout"] = evaluate_judge(judge, n_eval, seed)
    return judge


def evaluate_judge(judge: Judge, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Score the judge on `n` clean held-out renders ("judge_eval" stream) against their own captions."""
    scenes = sample_scenes(n, seed, stream="judge_eval")
    return judge.score([render(s, judge.size) for s in scenes], [caption(s) for s in scenes])
