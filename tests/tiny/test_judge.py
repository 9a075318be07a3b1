"""Tests for the prompt-accuracy judge (pruner.tiny.judge)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pruner.tiny.judge import (
    HEADS,
    META_FILE,
    WEIGHTS_FILE,
    Judge,
    augment,
    images_to_tensor,
    scene_targets,
    train_judge,
)
from pruner.tiny.synth import caption, parse_caption, render, sample_scenes


@pytest.fixture(scope="module")
def judge() -> Judge:
    """A briefly trained judge (150 steps, half the time of 300): far from the default, well above chance
    (88% prompt accuracy on the held-out renders, every attribute above 94%; chance is about 1 in 1000)."""
    return train_judge(n_train=3000, seed=0, steps=150, n_eval=0, progress=False)


@pytest.fixture(scope="module")
def heldout() -> tuple[list, list[str]]:
    scenes = sample_scenes(300, seed=1, stream="judge_eval")
    return [render(s) for s in scenes], [caption(s) for s in scenes]


def test_scene_targets_name_only_captioned_attributes() -> None:
    one = scene_targets(parse_caption("a small red circle on the left on a grey background"))
    assert one == {
        "background": "grey",
        "count": "1",
        "position": "left",
        "kind_1": "circle",
        "colour_1": "red",
        "size_1": "small",
    }
    two = scene_targets(parse_caption("a large blue square above a small red square on a black background"))
    assert two["relation"] == "above" and two["colour_2"] == "red" and "position" not in two
    assert set(two) <= set(HEADS)


def test_augment_is_mild_and_seeded() -> None:
    x = images_to_tensor([render(s) for s in sample_scenes(16, 0)])
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) < 0.06


def test_training_is_deterministic_by_seed() -> None:
    kwargs: dict[str, Any] = {"n_train": 200, "steps": 5, "batch_size": 16, "n_eval": 0, "progress": False}
    before = torch.get_num_threads()
    a, b = train_judge(seed=3, **kwargs), train_judge(seed=3, **kwargs)
    assert torch.get_num_threads() == before, "the thread count is restored"
    c = train_judge(seed=4, **kwargs)
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_judge_is_small() -> None:
    judge = train_judge(n_train=16, steps=1, batch_size=4, n_eval=0, progress=False)
    assert judge.meta["parameters"] < 400_000


@pytest.mark.slow
def test_scores_own_captions_well_above_chance(judge: Judge, heldout: tuple[list, list[str]]) -> None:
    images, prompts = heldout
    result = judge.score(images, prompts)
    assert result["n"] == 300
    assert result["prompt_accuracy"] > 0.6  # chance is about 1 in 10^3
    assert set(result["per_attribute"]) == set(HEADS)
    assert all(acc > 0.85 for acc in result["per_attribute"].values()), result


@pytest.mark.slow
def test_scores_mismatched_pairs_low(judge: Judge, heldout: tuple[list, list[str]]) -> None:
    images, prompts = heldout
    shuffled = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    assert judge.score(images, shuffled)["prompt_accuracy"] < 0.1


@pytest.mark.slow
def test_save_load_round_trip(judge: Judge, heldout: tuple[list, list[str]], tmp_path: Path) -> None:
    images, prompts = heldout
    judge.save(tmp_path / "judge")
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    meta = json.loads((tmp_path / "judge" / META_FILE).read_text())
    assert meta["heads"]["colour_1"] == list(HEADS["colour_1"])
    loaded = Judge.load(tmp_path / "judge")
    assert loaded.predict(images[:50]) == judge.predict(images[:50])
    assert loaded.score(images, prompts) == judge.score(images, prompts)


@pytest.mark.slow
def test_score_resizes_other_sizes(judge: Judge) -> None:
    scenes = sample_scenes(100, seed=2, stream="judge_eval")
    prompts = [caption(s) for s in scenes]
    big = judge.score([render(s, 64) for s in scenes], prompts)["prompt_accuracy"]
    small = judge.score([render(s) for s in scenes], prompts)["prompt_accuracy"]
    assert big > small - 0.1


def test_score_rejects_bad_input() -> None:
    judge = train_judge(n_train=16, steps=1, batch_size=4, n_eval=0, progress=False)
    image = render(sample_scenes(1, 0)[0])
    with pytest.raises(ValueError, match="images but"):
        judge.score([image], [])
    with pytest.raises(ValueError, match="cannot parse caption"):
        judge.score([image], ["a photo of a cat"])
