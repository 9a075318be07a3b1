"""``resolve_data``: the one choice of rows that the search and the distiller share."""

from __future__ import annotations

from pathlib import Path

import pytest

from pruner.data.resolve import resolve_data
from pruner.errors import PrunerError
from pruner.teacher import Teacher


def test_no_data_names_the_options_each_caller_takes(tiny_sdxl_pipeline: str) -> None:
    teacher = Teacher.resolve(tiny_sdxl_pipeline)  # a folder: no bundled set of its own
    assert not teacher.profile.bundled_data
    with pytest.raises(PrunerError, match=r"pass --data CACHE \(made with `pruner cache") as distill:
        resolve_data(teacher)
    assert "--prompts" not in str(distill.value)
    with pytest.raises(PrunerError, match=r"or --prompts FILE \(one prompt a line\)"):
        resolve_data(teacher, offer_prompts=True)


def test_a_given_or_recorded_folder_must_be_a_cache(tiny_sdxl_pipeline: str, tmp_path: Path) -> None:
    teacher = Teacher.resolve(tiny_sdxl_pipeline)
    with pytest.raises(PrunerError, match="is not a cache made by `pruner cache`"):
        resolve_data(teacher, str(tmp_path))
    with pytest.raises(PrunerError, match="is not a cache made by `pruner cache`"):
        resolve_data(teacher, recorded=str(tmp_path))
