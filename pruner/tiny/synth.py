"""Captioned synthetic scenes of coloured shapes: a small text-to-image task whose content is known.

Why: the bundled tiny SDXL teacher must learn from pictures whose every captioned attribute can be
checked afterwards. Each scene is one or two shapes (kind, colour, size) on a plain background; a
one-object scene also names where the object sits, a two-object scene names how the two relate
("left of" / "above"). Two objects force the model to bind attributes to the right object, which
keeps the task from saturating the way single-shape scenes do, while staying learnable at 32x32.

Everything is deterministic by seed: the same seed gives the same scenes, the same pixels and the
same PNG bytes. Captions come from a fixed grammar over `VOCABULARY`, and `parse_caption` inverts
`caption`, so evaluation prompts can be checked by the judge (`pruner.tiny.judge`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import uuid
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pruner.io import publish_dir

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {"grey": (110, 110, 110), "black": (20, 20, 20)}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)
SIZES: tuple[str, ...] = ("small", "large")
POSITION_PHRASES: dict[str, str] = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
POSITIONS: tuple[str, ...] = tuple(POSITION_PHRASES)
RELATION_PHRASES: dict[str, str] = {"left_of": "left of", "above": "above"}
RELATIONS: tuple[str, ...] = tuple(RELATION_PHRASES)

# Every word any caption can use, in grammar order; a tokenizer can be built from this alone.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            "a",
            *SIZES,
            *COLOURS,
            *KINDS,
            *" ".join(POSITION_PHRASES.values()).split(),
            *" ".join(RELATION_PHRASES.values()).split(),
            "on",
            *BACKGROUNDS,
            "background",
        ]
    )
)

# Random streams: each purpose draws from its own seed space, so evaluation prompts and the
# judge's data never replay the teacher's training scenes for the same integer seed.
STREAMS: dict[str, int] = {"dataset": 0, "prompts": 1, "judge_train": 2, "judge_eval": 3, "clip": 4}

P_SINGLE = 1 / 3  # share of one-object scenes
HALF_EXTENT = {"small": 0.14, "large": 0.2}  # half the bounding box; a small shape is ~9 px at 32x32,
# large enough that its kind survives the VAE's 4x downsampling (at 0.11 the VAE alone lost 14% of kinds)
SIZE_JITTER = 0.1  # relative jitter of the half extent
MARGIN = 0.025  # minimum distance from an object's box to the picture edge
MIN_GAP = 0.06  # minimum free space between the boxes of two objects
SUPERSAMPLE = 4  # render at 4x, then box-filter down: cheap anti-aliasing

Placement = tuple[float, float, float]  # (centre x, centre y, half extent), fractions of the picture


@dataclass(frozen=True)
class SceneObject:
    """One shape's captioned attributes."""

    kind: str
    colour: str
    size: str

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("size", self.size, SIZES)


@dataclass(frozen=True)
class Scene:
    """A scene's labels (what a caption says) plus, optionally, its exact layout (where things are).

    `position` is set for one-object scenes, `relation` for two-object scenes ("A left_of B" means
    objects[0] is left of objects[1]). `layout` holds one `Placement` per object; it is empty for
    scenes parsed from captions, which `render` then draws at a canonical layout.
    """

    background: str
    objects: tuple[SceneObject, ...]
    position: str | None = None
    relation: str | None = None
    layout: tuple[Placement, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("background", self.background, BACKGROUNDS)
        if len(self.objects) == 1:
            _check_choice("position", self.position, POSITIONS)
            if self.relation is not None:
                raise ValueError("a one-object scene has a position, not a relation")
        elif len(self.objects) == 2:
            _check_choice("relation", self.relation, RELATIONS)
            if self.position is not None:
                raise ValueError("a two-object scene has a relation, not a position")
            a, b = self.objects
            if a.kind == b.kind and a.colour == b.colour:
                raise ValueError("the two objects of a scene must differ in kind or colour")
        else:
            raise ValueError(f"a scene has one or two objects, got {len(self.objects)}")
        if self.layout and len(self.layout) != len(self.objects):
            raise ValueError("layout must hold one placement per object")

    def labels(self) -> Scene:
        """The scene without its layout: exactly what its caption says."""
        return dataclasses.replace(self, layout=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the `labels` object of metadata.jsonl)."""
        return {
            "background": self.background,
            "objects": [dataclasses.asdict(o) for o in self.objects],
            "position": self.position,
            "relation": self.relation,
            "layout": [list(p) for p in self.layout],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of `to_dict`."""
        return cls(
            background=data["background"],
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            position=data.get("position"),
            relation=data.get("relation"),
            layout=tuple((float(x), float(y), float(e)) for x, y, e in data.get("layout", ())),
        )


def _check_choice(name: str, value: str | None, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# --------------------------------------------------------------------------- sampling


def scene_rng(seed: int, stream: str = "dataset") -> np.random.Generator:
    """A numpy generator for `seed` within one of the independent `STREAMS`."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {list(STREAMS)}, got {stream!r}")
    return np.random.default_rng([STREAMS[stream], int(seed)])


def _pick(rng: np.random.Generator, choices: Sequence[str]) -> str:
    return choices[int(rng.integers(len(choices)))]


def _sample_object(rng: np.random.Generator) -> SceneObject:
    return SceneObject(kind=_pick(rng, KINDS), colour=_pick(rng, COLOURS), size=_pick(rng, SIZES))


def _half_extent(rng: np.random.Generator, size: str) -> float:
    return HALF_EXTENT[size] * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))


def _place_single(rng: np.random.Generator, obj: SceneObject, position: str) -> Placement:
    """Centre inside the position's horizontal band; bands are ~3 pixels apart at 32x32."""
    e = _half_extent(rng, obj.size)
    lo, hi = {"left": (e + MARGIN, 0.33), "centre": (0.42, 0.58), "right": (0.67, 1 - e - MARGIN)}[position]
    x = float(rng.uniform(lo, hi))
    y = float(rng.uniform(max(e + MARGIN, 0.3), min(1 - e - MARGIN, 0.7)))
    return _rounded((x, y, e))


def _place_pair(rng: np.random.Generator, objs: tuple[SceneObject, ...], relation: str) -> tuple[Placement, ...]:
    """Two boxes separated by at least MIN_GAP along the relation's axis and roughly aligned across it.

    The cross-axis offset (<= 0.12) stays far below the along-axis distance of the centres (>= 0.25),
    so the relation is unambiguous from the picture, and the gap makes overlap impossible.
    """
    ea, eb = (_half_extent(rng, o.size) for o in objs)
    room = 1 - 2 * MARGIN - 2 * ea - 2 * eb
    gap = float(rng.uniform(MIN_GAP, max(MIN_GAP, min(0.25, room))))
    start = MARGIN + float(rng.uniform(0, max(0.0, room - gap)))
    along = (start + ea, start + 2 * ea + gap + eb)
    centre = float(rng.uniform(0.35, 0.65))
    across = tuple(float(np.clip(centre + rng.uniform(-0.06, 0.06), e + MARGIN, 1 - e - MARGIN)) for e in (ea, eb))
    if relation == "left_of":
        return (_rounded((along[0], across[0], ea)), _rounded((along[1], across[1], eb)))
    return (_rounded((across[0], along[0], ea)), _rounded((across[1], along[1], eb)))


def _rounded(p: Placement) -> Placement:
    """Round to 4 decimals so a layout survives a JSON round trip exactly."""
    return (round(p[0], 4), round(p[1], 4), round(p[2], 4))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one random scene (labels and layout) from `rng`."""
    background = _pick(rng, BACKGROUNDS)
    if rng.random() < P_SINGLE:
        obj = _sample_object(rng)
        position = _pick(rng, POSITIONS)
        return Scene(background, (obj,), position=position, layout=(_place_single(rng, obj, position),))
    a = _sample_object(rng)
    b = _sample_object(rng)
    while a.kind == b.kind and a.colour == b.colour:
        b = _sample_object(rng)
    relation = _pick(rng, RELATIONS)
    return Scene(background, (a, b), relation=relation, layout=_place_pair(rng, (a, b), relation))


def iter_scenes(seed: int, stream: str = "dataset") -> Iterator[Scene]:
    """The endless sequence of scenes `stream` gives with `seed` (`sample_scenes` takes its first `n`)."""
    rng = scene_rng(seed, stream)
    while True:
        yield sample_scene(rng)


def sample_scenes(n: int, seed: int, stream: str = "dataset") -> list[Scene]:
    """`n` scenes drawn from `stream` with `seed`; a prefix of a longer draw with the same seed."""
    return list(itertools.islice(iter_scenes(seed, stream), n))


# A run of this many excluded draws in a row means `exclude` leaves (next to) no caption to draw.
MAX_EXCLUDED_RUN = 1000


def sample_prompts(n: int, seed: int, exclude: Container[str] = frozenset()) -> list[str]:
    """`n` evaluation captions from the "prompts" stream, skipping every caption in `exclude`.

    The stream is independent of the data set's, but the caption space is small (about 5,000), so
    independent draws still repeat training captions verbatim: pass a training set's captions as
    `exclude` to hold them out. Draws continue until `n` survive, so a smaller `n` gives a prefix of a
    larger one (same `seed` and `exclude`). ValueError if `exclude` rejects `MAX_EXCLUDED_RUN` in a row.
    """
    prompts: list[str] = []
    run = 0
    for scene in iter_scenes(seed, stream="prompts"):
        if len(prompts) >= n:
            break
        text = caption(scene)
        if text in exclude:
            run += 1
            if run >= MAX_EXCLUDED_RUN:
                raise ValueError(
                    f"the excluded captions rejected {run} draws in a row, leaving too few to draw {n} "
                    "prompts from: exclude fewer captions"
                )
            continue
        run = 0
        prompts.append(text)
    return prompts


# --------------------------------------------------------------------------- captions


def _object_phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.kind}"


def caption(scene: Scene) -> str:
    """The scene's caption, e.g. "a large blue square left of a small yellow triangle on a black background".

    One-object scenes read "a small red circle on the left on a grey background".
    """
    tail = f"on a {scene.background} background"
    if len(scene.objects) == 1:
        assert scene.position is not None
        return f"{_object_phrase(scene.objects[0])} {POSITION_PHRASES[scene.position]} {tail}"
    assert scene.relation is not None
    a, b = scene.objects
    return f"{_object_phrase(a)} {RELATION_PHRASES[scene.relation]} {_object_phrase(b)} {tail}"


def _parse_object(words: list[str], text: str) -> SceneObject:
    if len(words) != 4 or words[0] != "a":
        raise ValueError(f"cannot parse caption {text!r}: expected 'a <size> <colour> <kind>'")
    try:
        return SceneObject(kind=words[3], colour=words[2], size=words[1])
    except ValueError as err:
        raise ValueError(f"cannot parse caption {text!r}: {err}") from None


def _strip_prefix(words: list[str], phrases: dict[str, str]) -> tuple[str, list[str]] | None:
    for key, phrase in phrases.items():
        n = len(phrase.split())
        if words[:n] == phrase.split():
            return key, words[n:]
    return None


def parse_caption(text: str) -> Scene:
    """Invert `caption`: the labels (a layout-free `Scene`) a caption names; ValueError if off-grammar."""
    words = text.lower().split()
    if len(words) < 9 or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        raise ValueError(f"cannot parse caption {text!r}: expected it to end 'on a <colour> background'")
    background, body = words[-2], words[:-4]
    first = _parse_object(body[:4], text)
    rest = body[4:]
    if (hit := _strip_prefix(rest, POSITION_PHRASES)) is not None and not hit[1]:
        return _scene_or_error(text, background, (first,), position=hit[0])
    if (hit := _strip_prefix(rest, RELATION_PHRASES)) is not None:
        second = _parse_object(hit[1], text)
        return _scene_or_error(text, background, (first, second), relation=hit[0])
    raise ValueError(f"cannot parse caption {text!r}: expected a position or a relation after the first object")


def _scene_or_error(
    text: str,
    background: str,
    objects: tuple[SceneObject, ...],
    position: str | None = None,
    relation: str | None = None,
) -> Scene:
    try:
        return Scene(background, objects, position=position, relation=relation)
    except ValueError as err:
        raise ValueError(f"cannot parse caption {text!r}: {err}") from None


# --------------------------------------------------------------------------- rendering


def default_layout(scene: Scene) -> tuple[Placement, ...]:
    """A canonical, jitter-free layout for scenes that have none (e.g. parsed from a prompt)."""
    es = [HALF_EXTENT[o.size] for o in scene.objects]
    if len(es) == 1:
        x = {"left": 0.27, "centre": 0.5, "right": 0.73}[scene.position or "centre"]
        x = min(max(x, es[0] + MARGIN), 1 - es[0] - MARGIN)
        return ((x, 0.5, es[0]),)
    gap = 0.1
    start = (1 - 2 * es[0] - 2 * es[1] - gap) / 2
    along = (start + es[0], start + 2 * es[0] + gap + es[1])
    if scene.relation == "left_of":
        return ((along[0], 0.5, es[0]), (along[1], 0.5, es[1]))
    return ((0.5, along[0], es[0]), (0.5, along[1], es[1]))


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, rgb: tuple[int, int, int], cx: float, cy: float, e: float
) -> None:
    if kind == "circle":
        draw.ellipse((cx - e, cy - e, cx + e, cy + e), fill=rgb)
    elif kind == "square":
        s = 0.85 * e  # a slightly smaller box keeps the square's area close to the circle's
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=rgb)
    else:
        draw.polygon([(cx, cy - e), (cx + e, cy + e), (cx - e, cy + e)], fill=rgb)


def render(scene: Scene, size: int = 32) -> Image.Image:
    """Draw the scene as a `size` x `size` RGB picture (supersampled, then box-filtered down)."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for obj, (x, y, e) in zip(scene.objects, scene.layout or default_layout(scene), strict=True):
        _draw_shape(draw, obj.kind, COLOUR_RGB[obj.colour], x * big, y * big, e * big)
    return image.resize((size, size), Image.Resampling.BOX)


def boxes_overlap(a: Placement, b: Placement, gap: float = 0.0) -> bool:
    """Whether two placements' bounding boxes come closer than `gap` (fractions of the picture)."""
    return abs(a[0] - b[0]) < a[2] + b[2] + gap and abs(a[1] - b[1]) < a[2] + b[2] + gap


# --------------------------------------------------------------------------- dataset


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty: pass a new out_dir or delete it first")


def _write_items(tmp: Path, scenes: list[Scene], size: int, progress: bool) -> None:
    width = max(5, len(str(len(scenes) - 1)))
    with (tmp / "metadata.jsonl").open("w", encoding="utf-8") as meta:
        for i, scene in enumerate(tqdm(scenes, desc="rendering", unit="img", disable=not progress)):
            name = f"{i:0{width}d}.png"
            render(scene, size).save(tmp / name, format="PNG")
            record = {"file_name": name, "text": caption(scene), "labels": scene.to_dict()}
            meta.write(json.dumps(record) + "\n")


def write_dataset(
    out_dir: str | os.PathLike[str], n: int, seed: int, size: int = 32, progress: bool = True
) -> dict[str, Any]:
    """Write `n` captioned pictures plus metadata.jsonl (diffusers imagefolder layout) to `out_dir`.

    The folder is built in a hidden sibling and renamed into place, so `out_dir` is either absent or
    complete. Same seed -> byte-identical files. Returns a summary of what was written.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_dir)
    _check_out_dir(out)
    scenes = sample_scenes(n, seed, stream="dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_items(tmp, scenes, size, progress)
        _check_out_dir(out)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    singles = sum(len(s.objects) == 1 for s in scenes)
    return {
        "n": n,
        "seed": seed,
        "size": size,
        "out_dir": str(out),
        "one_object": singles,
        "two_objects": n - singles,
    }
