"""ONNX export: students of both fixtures (uneven layers, narrowed widths) run in onnxruntime at other batch
sizes and resolutions than the traced one and agree with PyTorch; fp16; the CLI reports the difference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_plans
from diffusers import UNet2DConditionModel
from typer.testing import CliRunner

from pruner.cli import app
from pruner.compat.onnx_export import export_onnx, onnx_inputs, onnxruntime_session
from pruner.errors import PrunerError
from pruner.unet import Plan, build_student, topology_of
from pruner.unet.width import save_unet

pytest.importorskip("onnxruntime")
runner = CliRunner()


def test_students_of_both_topologies_export_with_dynamic_shapes_and_match_pytorch(
    tiny_unet: UNet2DConditionModel, tmp_path: Path
) -> None:
    plan = next(p for p in random_plans(topology_of(tiny_unet), 20, 3) if any(".resnets." in n for n in p.removed))
    student = build_student(tiny_unet, plan)[0].eval()
    report = export_onnx(student, tmp_path / "s.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4 and len(report.checked) == 2
    session = onnxruntime_session(tmp_path / "s.onnx")
    inputs = onnx_inputs(dict(student.config), 2, 16, 24, torch.float32, seed=5)
    got = session.run(["out_sample"], {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if "time_ids" in inputs else None
        ref = student(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], added_cond_kwargs=added)
    torch.testing.assert_close(torch.from_numpy(got), ref.sample, atol=1e-4, rtol=1e-4)
    assert student.dtype == torch.float32  # the caller's model is left as it was


def test_a_width_pruned_student_exports_in_fp16_and_the_cli_reports_the_difference(
    tiny_sdxl: UNet2DConditionModel, tmp_path: Path
) -> None:
    save_unet(build_student(tiny_sdxl, Plan(ff_keep=((1, 0.5),)))[0], tmp_path / "narrow")
    result = runner.invoke(app, ["export", str(tmp_path / "narrow"), "--format", "onnx", "--fp16",
                                 "--out", str(tmp_path / "n.onnx")])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "float16" in text and "max abs difference" in text
    diff = float(text.split("max abs difference ")[1].split()[0])
    assert diff < 0.05  # fp16 against fp16 PyTorch; outputs are of order 1
    bad_suffix = ["export", str(tmp_path / "narrow"), "--format", "onnx", "--out", str(tmp_path / "n.bin")]
    wrong = runner.invoke(app, bad_suffix)
    assert wrong.exit_code == 2 and ".onnx" in wrong.output
    with pytest.raises(PrunerError, match="already exists"):
        export_onnx(str(tmp_path / "narrow"), tmp_path / "n.onnx")
