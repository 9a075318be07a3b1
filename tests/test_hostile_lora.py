"""Hostile LoRA files: `pruner port-lora` checks every lora_A/lora_B pair (one rank on both sides, at least 1; one
alpha; metadata that is a JSON object) and its output location, refusing a misfit in one line naming the entry;
what it writes always loads with diffusers' `load_lora_weights` on the student's pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_hostile import RECIPES, one_line_error, runner

from pruner.cli import app
from pruner.unet import load_pipeline, load_unet

Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
K = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
RECIPE = str(RECIPES / "tiny-sdxl-bk-small.yaml")


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in load_unet("tiny-sdxl").named_parameters()}


def _pair(shapes: dict[str, tuple[int, ...]], module: str, rank_a: int, rank_b: int) -> dict[str, torch.Tensor]:
    out, inner = shapes[f"{module}.weight"]
    return {f"unet.{module}.lora_A.weight": torch.randn(rank_a, inner) * 0.1,
            f"unet.{module}.lora_B.weight": torch.randn(out, rank_b) * 0.1}  # fmt: skip


def _lora(path: Path, state: dict[str, torch.Tensor], metadata: str | None = None) -> Path:
    save_file(state, str(path), metadata={"format": "pt"} | ({"lora_adapter_metadata": metadata} if metadata else {}))
    return path


def _port(lora: Path, out: Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["port-lora", str(lora), "--recipe", RECIPE, "--out", str(out)])


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("ranks differ", f"LoRA entry unet.{Q}: lora_A has rank 4 and lora_B rank 8"),
        ("rank 0", f"LoRA entry unet.{Q}: lora_A has rank 0"),
        ("two-element alpha", f"alpha of LoRA entry unet.{Q} holds 2 values"),
        ("metadata not JSON", "lora_adapter_metadata is not JSON"),
        ("metadata a list", "lora_adapter_metadata is a list, not a JSON object"),
    ],
)
def test_a_lora_that_could_not_load_is_refused_in_one_line_naming_the_entry(
    case: str, said: str, shapes: dict[str, tuple[int, ...]], tmp_path: Path
) -> None:
    ranks = {"ranks differ": (4, 8), "rank 0": (0, 0)}.get(case, (4, 4))
    state = _pair(shapes, Q, *ranks)
    if case == "two-element alpha":
        state[f"unet.{Q}.alpha"] = torch.tensor([4.0, 8.0])
    metadata = {"metadata not JSON": "{unet.lora_alpha: 4", "metadata a list": "[4, 8]"}.get(case)
    lora = _lora(tmp_path / "lora.safetensors", state, metadata)
    one_line_error(_port(lora, tmp_path / "out.safetensors"), said)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_unusable_out_is_one_line_before_any_work(
    where: str, shapes: dict[str, tuple[int, ...]], tmp_path: Path
) -> None:
    lora = _lora(tmp_path / "lora.safetensors", _pair(shapes, Q, 4, 4))
    (tmp_path / "a-file").write_text("taken\n")
    out = tmp_path / "a-file" / "ported" if where == "under a file" else Path("/proc/pruner-ported")
    one_line_error(_port(lora, out), str(out), "is a file" if where == "under a file" else "not writable")
    for command in (["export", "tiny-sdxl", "--unet-only", "--out", str(out / "u.safetensors")],):
        one_line_error(runner.invoke(app, command), "is a file" if where == "under a file" else "not writable")


def test_a_lora_with_a_rank_per_module_ports_and_loads_on_the_students_pipeline(
    shapes: dict[str, tuple[int, ...]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {**_pair(shapes, Q, 2, 2), **_pair(shapes, K, 6, 6), f"unet.{K}.alpha": torch.tensor(3.0)}
    lora = _lora(tmp_path / "lora.safetensors", state, '{"unet.lora_alpha": 4}')
    assert runner.invoke(app, ["apply", RECIPE, "--out", str(tmp_path / "student")]).exit_code == 0
    result = runner.invoke(app, ["port-lora", str(lora), "--student", str(tmp_path / "student"), "--out",
                                 str(tmp_path / "ported")])  # fmt: skip
    assert result.exit_code == 0, result.output
    pipe = load_pipeline("tiny-sdxl")
    pipe.unet = load_unet(str(tmp_path / "student"))
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        pipe.load_lora_weights(str(tmp_path / "ported"))
    assert not [r for r in caplog.records if "CLIPTextModel" not in r.getMessage()], caplog.text
    assert pipe.unet.peft_config
