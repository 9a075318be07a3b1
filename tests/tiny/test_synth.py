"""Tests for the captioned synthetic scene generator (pruner.tiny.synth)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pruner.tiny.synth import (
    MAX_EXCLUDED_RUN,
    MIN_GAP,
    VOCABULARY,
    Scene,
    SceneObject,
    boxes_overlap,
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

N_RANDOM = 3000


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return sample_scenes(N_RANDOM, seed=123)


def test_vocabulary_is_lowercase_unique_words() -> None:
    assert len(VOCABULARY) == len(set(VOCABULARY))
    assert all(w.isalpha() and w == w.lower() for w in VOCABULARY)


def test_every_caption_word_is_in_vocabulary(scenes: list[Scene]) -> None:
    used = {w for s in scenes for w in caption(s).split()}
    assert used <= set(VOCABULARY)
    assert used == set(VOCABULARY), "the sample should exercise the whole vocabulary"


def test_caption_parse_round_trip(scenes: list[Scene]) -> None:
    for scene in scenes:
        text = caption(scene)
        assert parse_caption(text) == scene.labels(), text
        assert caption(parse_caption(text)) == text


def test_caption_examples() -> None:
    one = Scene("grey", (SceneObject("circle", "red", "small"),), position="left")
    assert caption(one) == "a small red circle on the left on a grey background"
    two = Scene(
        "black",
        (SceneObject("square", "blue", "large"), SceneObject("triangle", "yellow", "small")),
        relation="left_of",
    )
    assert caption(two) == "a large blue square left of a small yellow triangle on a black background"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a small red circle",
        "a small red circle on the left on a pink background",
        "a tiny red circle on the left on a grey background",
        "a small red circle on the top on a grey background",
        "a small red circle right of a small blue square on a grey background",
        "a small red circle left of a large red circle on a grey background",  # same kind and colour
        "a small red circle on the left left of a small blue square on a grey background",
    ],
)
def test_parse_rejects_off_grammar_captions(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse caption"):
        parse_caption(text)


def test_parse_is_case_and_space_tolerant() -> None:
    text = "  A Small RED circle in the  centre on a Black background "
    assert caption(parse_caption(text)) == "a small red circle in the centre on a black background"


def test_sampling_is_deterministic_by_seed_and_stream() -> None:
    assert sample_scenes(50, 7) == sample_scenes(50, 7)
    assert sample_scenes(50, 7) != sample_scenes(50, 8)
    assert sample_scenes(50, 7, "dataset") != sample_scenes(50, 7, "prompts")
    assert sample_scenes(20, 7) == sample_scenes(50, 7)[:20]
    with pytest.raises(ValueError, match="stream"):
        scene_rng(0, "nope")


def test_mix_of_one_and_two_object_scenes(scenes: list[Scene]) -> None:
    singles = sum(len(s.objects) == 1 for s in scenes) / len(scenes)
    assert 0.25 < singles < 0.42
    assert {s.relation for s in scenes if s.relation} == {"left_of", "above"}
    assert {s.position for s in scenes if s.position} == {"left", "centre", "right"}


def test_objects_inside_picture_and_never_overlap(scenes: list[Scene]) -> None:
    for scene in scenes:
        for x, y, e in scene.layout:
            assert min(x - e, y - e) >= 0 and max(x + e, y + e) <= 1
        if len(scene.layout) == 2:
            a, b = scene.layout
            assert not boxes_overlap(a, b, gap=MIN_GAP * 0.99), scene


def test_two_objects_differ_in_kind_or_colour(scenes: list[Scene]) -> None:
    for scene in scenes:
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert (a.kind, a.colour) != (b.kind, b.colour)


def test_layout_matches_position_and_relation(scenes: list[Scene]) -> None:
    for scene in scenes:
        if scene.position is not None:
            x = scene.layout[0][0]
            lo, hi = {"left": (0, 0.34), "centre": (0.41, 0.59), "right": (0.66, 1)}[scene.position]
            assert lo <= x <= hi
        else:
            (xa, ya, _), (xb, yb, _) = scene.layout
            along, across = (xb - xa, yb - ya) if scene.relation == "left_of" else (yb - ya, xb - xa)
            assert along > 0.25 and abs(across) <= 0.12 + 1e-9


def test_scene_validation() -> None:
    red = SceneObject("circle", "red", "small")
    with pytest.raises(ValueError, match="background"):
        Scene("pink", (red,), position="left")
    with pytest.raises(ValueError, match="position"):
        Scene("grey", (red,))
    with pytest.raises(ValueError, match="differ"):
        Scene("grey", (red, SceneObject("circle", "red", "large")), relation="above")
    with pytest.raises(ValueError, match="one or two"):
        Scene("grey", (red, red, red), relation="above")
    with pytest.raises(ValueError, match="colour"):
        SceneObject("circle", "orange", "small")


def test_scene_dict_round_trip_through_json(scenes: list[Scene]) -> None:
    for scene in scenes[:200]:
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_render_shape_colours_and_determinism() -> None:
    scene = sample_scene(scene_rng(3))
    image = render(scene)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert render(scene).tobytes() == image.tobytes()
    assert render(scene, size=48).size == (48, 48)
    pixels = np.asarray(image).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 3, "anti-aliased edges give intermediate colours"


def test_render_of_parsed_caption_uses_canonical_layout() -> None:
    labels = parse_caption("a large white triangle above a small green circle on a black background")
    image = np.asarray(render(labels)).astype(int)
    top, bottom = image[:16], image[16:]
    assert (top.min(axis=2) > 200).sum() > 10  # white in the upper half
    assert ((bottom[..., 1] > 150) & (bottom[..., 0] < 100)).sum() > 5  # green in the lower half


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_write_dataset_layout(tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = write_dataset(out, n=12, seed=5, progress=False)
    assert summary == {
        "n": 12,
        "seed": 5,
        "size": 32,
        "out_dir": str(out),
        "one_object": summary["one_object"],
        "two_objects": 12 - summary["one_object"],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no temporary sibling left behind"
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    expected = sample_scenes(12, 5)
    for i, (line, scene) in enumerate(zip(lines, expected, strict=True)):
        record = json.loads(line)
        assert record["file_name"] == f"{i:05d}.png"
        assert record["text"] == caption(scene)
        assert Scene.from_dict(record["labels"]) == scene
        with Image.open(out / record["file_name"]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert summary["one_object"] == sum(len(s.objects) == 1 for s in expected)


def test_write_dataset_is_byte_identical_by_seed(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n=8, seed=11, progress=False)
    write_dataset(tmp_path / "b", n=8, seed=11, progress=False)
    write_dataset(tmp_path / "c", n=8, seed=12, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_write_dataset_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty") as err:
        write_dataset(out, n=2, seed=0, progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_write_dataset_fills_an_existing_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_dataset(out, n=3, seed=0, size=16, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "metadata.jsonl"]
    with Image.open(out / "00000.png") as image:
        assert image.size == (16, 16)


def test_sample_prompts_deterministic_parseable_and_held_out() -> None:
    prompts = sample_prompts(200, seed=0)
    assert prompts == sample_prompts(200, seed=0)
    assert prompts != sample_prompts(200, seed=1)
    assert all(caption(parse_caption(p)) == p for p in prompts)
    assert prompts != [caption(s) for s in sample_scenes(200, seed=0)]


def test_iter_scenes_continues_sample_scenes() -> None:
    it = iter_scenes(9, "prompts")
    assert [next(it) for _ in range(30)] == sample_scenes(30, 9, "prompts")


def test_sample_prompts_skips_excluded_captions_and_stays_prefix_stable() -> None:
    raw = sample_prompts(400, seed=2)
    exclude = frozenset(raw[::2])  # every caption drawn at an even index, and its repeats elsewhere
    kept = sample_prompts(150, seed=2, exclude=exclude)
    assert len(kept) == 150 and not set(kept) & exclude
    assert kept == [p for p in sample_prompts(2000, seed=2) if p not in exclude][:150]
    assert sample_prompts(40, seed=2, exclude=exclude) == kept[:40]
    assert sample_prompts(0, seed=2, exclude=exclude) == []


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def test_sample_prompts_refuses_an_exclusion_that_leaves_nothing() -> None:
    with pytest.raises(ValueError, match=f"rejected {MAX_EXCLUDED_RUN} draws in a row"):
        sample_prompts(1, seed=0, exclude=_Everything())
