"""Teacher profiles: the defaults that depend on which teacher is being compressed.

The library's policy code asks for a teacher's profile instead of testing for a particular teacher by
name. The bundled ``tiny-sdxl`` teacher distills at its native 32x32 latents with large batches, has an
architecture pruner can price without weights, and comes with a data set pruner synthesizes itself;
any other teacher gets SSD-1B's published distillation scale (1024px, batch 1, 1e-5) and needs the
user's data (``pruner cache``) or prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "TINY_SDXL", "TeacherProfile", "profile_for"]


@dataclass(frozen=True)
class TeacherProfile:
    """Defaults for recipes found on a teacher, and where its data comes from when none is given."""

    name: str
    architecture: str | None  # recorded in recipes, so they can be priced with no weights
    resolution: int | None  # distillation resolution in pixels; None: the teacher's native size
    batch_size: int
    steps: int
    learning_rate: float
    bundled_data: bool  # pruner can synthesize this teacher's training data itself (pruner.data.bundled)


TINY_SDXL = TeacherProfile(
    "tiny-sdxl", architecture="tiny-sdxl", resolution=32, batch_size=64, steps=2000, learning_rate=2e-4,
    bundled_data=True,
)  # fmt: skip
PUBLISHED = TeacherProfile(
    "published", architecture=None, resolution=None, batch_size=1, steps=100_000, learning_rate=1e-5,
    bundled_data=False,
)  # fmt: skip
_BY_TEACHER = {"tiny-sdxl": TINY_SDXL}


def profile_for(teacher: str) -> TeacherProfile:
    """The profile of a teacher reference (the bundled teacher's own, else SSD-1B's published scale)."""
    return _BY_TEACHER.get(teacher, PUBLISHED)
