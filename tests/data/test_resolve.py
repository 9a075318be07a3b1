"""``resolve_data``: the one choice of rows that the search and the distiller share."""

from __future__ import annotations

from pathlib import Path

import pytest

from pruner.data.bundled import bundled_cache_path
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


def test_the_bundled_sets_folder_waits_for_the_process_building_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe or search that names the bundled set by its folder, while another process is still building
    it there (the folder exists, cache.json does not yet), goes through the set's build lock rather than read
    a half-written cache."""
    import pruner.data.resolve as resolve

    monkeypatch.setenv("PRUNER_CACHE_DIR", str(tmp_path))
    teacher = Teacher.resolve("tiny-sdxl")
    half_built = bundled_cache_path()
    half_built.mkdir(parents=True)
    built: list[Teacher] = []

    def bundled(t: Teacher, progress: bool = True) -> None:  # the build lock's caller, stubbed
        built.append(t)

    monkeypatch.setattr(resolve, "default_data", bundled)
    with pytest.raises(PrunerError, match="pass --data CACHE"):  # default_data (stubbed) gave nothing back
        resolve_data(teacher, str(half_built))
    with pytest.raises(PrunerError, match="pass --data CACHE"):
        resolve_data(teacher, recorded=str(half_built))
    assert len(built) == 2
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(PrunerError, match="is not a cache made by `pruner cache`"):  # any other folder: as given
        resolve_data(teacher, str(other))
