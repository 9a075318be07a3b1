"""A bundled tiny text-to-image task: captioned synthetic shape scenes and a judge of prompt accuracy."""

from __future__ import annotations

from pruner.tiny.judge import Judge, evaluate_judge, train_judge
from pruner.tiny.synth import (
    VOCABULARY,
    Scene,
    SceneObject,
    caption,
    iter_scenes,
    parse_caption,
    render,
    sample_prompts,
    sample_scene,
    sample_scenes,
    scene_rng,
    write_dataset,
)

__all__ = [
    "VOCABULARY",
    "Judge",
    "Scene",
    "SceneObject",
    "caption",
    "evaluate_judge",
    "iter_scenes",
    "parse_caption",
    "render",
    "sample_prompts",
    "sample_scene",
    "sample_scenes",
    "scene_rng",
    "train_judge",
    "write_dataset",
]
