"""Single-file export: depth-pruned students of both fixtures written in the SGM layout load back through
diffusers' ``from_single_file`` (equal layer counts) and ``pruner.load_unet`` (any), give the student's
output, and their keys describe the student's depths to a layer-counting loader; in diffusers' key layout,
students with uneven layer counts load through ``from_single_file(FILE, config=STUDENT)`` too."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import TINY_SD15, TINY_SDXL, random_plans, unet_inputs
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from typer.testing import CliRunner

import pruner.unet
from pruner.cli import app
from pruner.compat.export import export_single_file
from pruner.compat.loaders import single_file_compatibility
from pruner.compat.sgm import sgm_topology
from pruner.unet import Plan, build_student, nearest_expressible, topology_of, unit_kinds
from pruner.unet.width import save_unet

runner = CliRunner()
CONFIGS = {"sdxl": TINY_SDXL, "sd15": TINY_SD15}


def _depth_plans(teacher: UNet2DConditionModel, seed: int) -> list[Plan]:
    """A random plan without layer units, and one removing the second layer of every down block (uniform)."""
    topo = topology_of(teacher)
    kinds = unit_kinds(topo)
    rng = random.Random(seed)
    names = [n for n, k in kinds.items() if k != "layer" and rng.random() < 0.35]
    every_second = [n for n, k in kinds.items() if k == "layer" and n.endswith(".resnets.1")]
    return [nearest_expressible(Plan.removing(names), topo), nearest_expressible(Plan.removing(every_second), topo)]


def _out(model: UNet2DConditionModel, name: str) -> torch.Tensor:
    args, kwargs = unet_inputs(CONFIGS[name], 8, batch=2)
    with torch.no_grad():
        return model(*args, **kwargs).sample


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_only_students_of_both_topologies_round_trip_through_diffusers_single_file_loading(
    tiny_unet: UNet2DConditionModel, tmp_path: Path, seed: int
) -> None:
    name = _kind(tiny_unet)
    for k, plan in enumerate(_depth_plans(tiny_unet, seed)):
        student = build_student(tiny_unet, plan)[0].eval()
        folder, file = tmp_path / f"student{k}", tmp_path / f"student{k}.safetensors"
        student.save_pretrained(folder)
        report = export_single_file(folder, file)
        back = UNet2DConditionModel.from_single_file(str(file), config=str(folder)).eval()
        expected = _out(student, name)
        torch.testing.assert_close(_out(back, name), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_out(pruner.unet.load_unet(str(file)), name), expected, atol=1e-4, rtol=1e-4)
        with safe_open(str(file), framework="pt") as f:
            assert all(key.startswith("model.diffusion_model.") for key in f.keys())  # noqa: SIM118
            depths = json.loads(f.metadata()["pruner.depths"])
        assert depths["layers_per_block"] == student.config.layers_per_block
        assert report.metadata["pruner.depths"] == json.dumps(depths)
        assert depths["mid_block_type"] == student.config.mid_block_type
        assert sgm_topology(_keys(file)) == topology_of(student)


def _kind(unet: UNet2DConditionModel) -> str:
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"


def _saved_uneven_students(
    teacher: UNet2DConditionModel, seed: int, tmp_path: Path
) -> list[tuple[UNet2DConditionModel, Path, Path]]:
    """Two students of uneven depths, each saved with save_pretrained, beside the path its single file takes."""
    saved = []
    for k, plan in enumerate(_uneven_plans(teacher, seed, 2)):
        student = build_student(teacher, plan)[0].eval()
        folder, file = tmp_path / f"student{k}", tmp_path / f"student{k}.safetensors"
        student.save_pretrained(folder)
        saved.append((student, folder, file))
    return saved


def _uneven_plans(teacher: UNet2DConditionModel, seed: int, n: int) -> list[Plan]:
    """Random expressible plans whose down blocks keep different numbers of layers."""
    topo = topology_of(teacher)
    plans = [p for p in random_plans(topo, 40, seed) if len(set(single_file_compatibility(p, topo).layers)) > 1]
    assert len(plans) >= n
    return plans[:n]


def _keys(file: Path) -> list[str]:
    with safe_open(str(file), framework="pt") as f:
        return list(f.keys())


@pytest.mark.parametrize("seed", [0, 1])
def test_students_with_uneven_layer_counts_round_trip_and_their_keys_describe_their_depths(
    tiny_unet: UNet2DConditionModel, tmp_path: Path, seed: int
) -> None:
    name = _kind(tiny_unet)
    for student, folder, file in _saved_uneven_students(tiny_unet, seed, tmp_path):
        report = export_single_file(folder, file)
        back = pruner.unet.load_unet(str(file))
        torch.testing.assert_close(_out(back, name), _out(student, name), atol=1e-4, rtol=1e-4)
        assert sgm_topology(_keys(file)) == topology_of(student)  # what a layer-counting loader reads
        assert "diffusers from_single_file: no" in report.summary() and "pruner.load_unet" in report.summary()


@pytest.mark.parametrize("seed", [0, 1])
def test_uneven_students_in_diffusers_layout_load_through_from_single_file_with_their_config(
    tiny_unet: UNet2DConditionModel, tmp_path: Path, seed: int
) -> None:
    """diffusers' SGM converter cannot number uneven blocks; the diffusers-key file loads unconverted."""
    name = _kind(tiny_unet)
    for student, folder, file in _saved_uneven_students(tiny_unet, seed, tmp_path):
        report = export_single_file(folder, file, layout="diffusers")
        expected = _out(student, name)
        back = UNet2DConditionModel.from_single_file(str(file), config=str(folder)).eval()
        torch.testing.assert_close(_out(back, name), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_out(pruner.unet.load_unet(str(file)), name), expected, atol=1e-4, rtol=1e-4)
        line = report.loaders.line()
        assert "pruner.load_unet, diffusers from_single_file: yes" in line
        assert "layer-counting loaders (ComfyUI-style): no" in line and "diffusers layout" in report.summary()


def test_the_found_example_student_of_the_bundled_teacher_exports_and_loads_back(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml"
    student = pruner.build_student("tiny-sdxl", recipe).eval()
    student.save_pretrained(tmp_path / "found")
    export_single_file(tmp_path / "found", tmp_path / "found.safetensors")
    export_single_file(tmp_path / "found", tmp_path / "found-diffusers.safetensors", layout="diffusers")
    args, kwargs = unet_inputs(dict(student.config), 8, batch=2)
    loaded = [
        pruner.unet.load_unet(str(tmp_path / "found.safetensors")),
        pruner.unet.load_unet(str(tmp_path / "found-diffusers.safetensors")),
        UNet2DConditionModel.from_single_file(
            str(tmp_path / "found-diffusers.safetensors"), config=str(tmp_path / "found")
        ),
    ]
    with torch.no_grad():
        expected = student(*args, **kwargs).sample
        for back in loaded:
            torch.testing.assert_close(back.eval()(*args, **kwargs).sample, expected, atol=1e-4, rtol=1e-4)
    assert sgm_topology(_keys(tmp_path / "found.safetensors")) == topology_of(student)


def test_width_pruned_students_round_trip_through_pruner_load_unet_only(
    tiny_sdxl: UNet2DConditionModel, tmp_path: Path
) -> None:
    narrow = build_student(tiny_sdxl, Plan.removing(["down_blocks.1.resnets.1"], ff_keep={1: 0.5}))[0].eval()
    save_unet(narrow, tmp_path / "narrow")
    report = export_single_file(tmp_path / "narrow", tmp_path / "narrow.safetensors")
    back = pruner.unet.load_unet(str(tmp_path / "narrow.safetensors"))
    torch.testing.assert_close(_out(back, "sdxl"), _out(narrow, "sdxl"), atol=1e-4, rtol=1e-4)
    line = report.loaders.line()
    assert line.startswith("Single file: pruner.load_unet: yes;") and "diffusers from_single_file: no" in line
    assert pruner.unet.load.unet_ff_inner(str(tmp_path / "narrow.safetensors"))  # priced at its widths as a teacher


def test_pruner_export_writes_the_file_and_refuses_a_pipeline_without_unet_only(
    tiny_sdxl: UNet2DConditionModel, tiny_sdxl_pipeline: str, tmp_path: Path
) -> None:
    build_student(tiny_sdxl, Plan.removing(["mid_block.attentions.0"]))[0].save_pretrained(tmp_path / "s")
    result = runner.invoke(app, ["export", str(tmp_path / "s"), "--out", str(tmp_path / "s.safetensors")])
    assert result.exit_code == 0, result.output
    assert "SGM layout" in " ".join(result.output.split()) and (tmp_path / "s.safetensors").is_file()
    again = runner.invoke(app, ["export", str(tmp_path / "s"), "--out", str(tmp_path / "s.safetensors")])
    assert again.exit_code == 2 and "already exists" in again.output
    piped = runner.invoke(app, ["export", tiny_sdxl_pipeline, "--out", str(tmp_path / "p.safetensors")])
    assert piped.exit_code == 2 and "--unet-only" in piped.output
    unet_only = ["export", tiny_sdxl_pipeline, "--out", str(tmp_path / "p.safetensors"), "--unet-only"]
    assert runner.invoke(app, unet_only).exit_code == 0
