"""ONNX export of a student's UNet, checked against PyTorch with onnxruntime.

The graph takes ``sample`` (batch, 4, height, width), ``timestep`` (batch, float32) and
``encoder_hidden_states`` (batch, sequence, cross-attention dim), and for SDXL-style UNets ``text_embeds`` and
``time_ids``; it returns ``out_sample``. Batch, height, width and sequence length are dynamic axes.

torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used: it traces the student as it
is, pruned depths and narrowed feed-forwards included, in seconds; the ``torch.export``-based exporter took
minutes on the tiny test UNet here for the same graph. optimum's exporter is not used: it rebuilds the
model from a stock config (``optimum-cli export onnx`` on a model id or folder), which a width-pruned student
does not have, and adds nothing for a bare UNet.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruner.errors import PrunerError
from pruner.io import atomic_path, check_new_file, output_lock

__all__ = ["OnnxReport", "OnnxUNet", "export_onnx", "onnx_inputs", "onnxruntime_session"]

SEQUENCE = 77  # CLIP's prompt length, the example the graph is traced with (the axis stays dynamic)
OUTPUT = "out_sample"


class OnnxUNet(nn.Module):
    """The UNet with plain tensor inputs and its ``.sample`` as the one output (what ONNX graphs take)."""

    def __init__(self, unet: nn.Module, sdxl: bool) -> None:
        super().__init__()
        self.unet, self.sdxl = unet, sdxl

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                *added: torch.Tensor) -> torch.Tensor:  # fmt: skip
        cond = {"text_embeds": added[0], "time_ids": added[1]} if self.sdxl else None
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond).sample


@dataclass(frozen=True)
class OnnxReport:
    """What was written, and how far onnxruntime's output is from PyTorch's at the shapes checked."""

    path: Path
    dtype: str
    inputs: dict[str, list[str | int]]
    checked: tuple[str, ...] = ()  # "batch 2, 16x16" per shape compared
    max_abs_diff: float | None = None
    max_abs_output: float | None = None

    def summary(self) -> str:
        axes = "dynamic batch, height, width and sequence"
        line = f"wrote {self.path} (ONNX, {self.dtype}, {axes}; inputs {', '.join(self.inputs)})"
        if self.max_abs_diff is None:
            return line + "; not checked"
        return (
            f"{line}\nonnxruntime vs PyTorch at {'; '.join(self.checked)}: max abs difference "
            f"{self.max_abs_diff:.3g} (outputs up to {self.max_abs_output:.3g})"
        )


def _is_sdxl(config: Any) -> bool:
    return config.get("addition_embed_type") == "text_time"


def onnx_inputs(config: Any, batch: int, height: int, width: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random inputs of the graph's names and shapes (``config``: the UNet's diffusers config)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn(batch, config["in_channels"], height, width, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, SEQUENCE, config["cross_attention_dim"], generator=g),
    }
    if _is_sdxl(config):
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["text_embeds"] = torch.randn(batch, text, generator=g)
        inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch)
    return {k: v if k == "timestep" else v.to(dtype) for k, v in inputs.items()}


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names}
    axes["sample"] = axes[OUTPUT] = {0: "batch", 2: "height", 3: "width"}
    axes["encoder_hidden_states"] = {0: "batch", 1: "sequence"}
    return axes


def _trace(model: OnnxUNet, example: dict[str, torch.Tensor], folder: Path, opset: int) -> Path:
    """Export into ``folder`` (a model over 2 GB puts its weights in files beside the graph)."""
    import warnings

    path = folder / "model.onnx"
    names = list(example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches it freezes (none change results)
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=names, output_names=[OUTPUT],
                          dynamic_axes=_dynamic_axes(names), opset_version=opset, dynamo=False)  # fmt: skip
    return path


def _write(exported: Path, out: Path) -> None:
    """Move the traced graph to ``out`` (weights of a model over 2 GB go to ``out.name + '.data'`` beside it)."""
    import onnx

    size = sum(p.stat().st_size for p in exported.parent.iterdir())
    with atomic_path(out, needed=size) as tmp:
        if len(list(exported.parent.iterdir())) == 1:
            exported.replace(tmp)
        else:
            onnx.save_model(onnx.load(str(exported)), str(tmp), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{out.name}.data")  # fmt: skip


def onnxruntime_session(path: str | Path) -> Any:
    """An onnxruntime CPU session of an exported graph (one line naming the extra when it is missing)."""
    try:
        import onnxruntime
    except ImportError:
        raise PrunerError("onnxruntime is not installed; pip install 'pruner[onnx]' (or skip the check)") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check(model: OnnxUNet, path: Path, config: Any, dtype: torch.dtype, step: int) -> dict[str, Any]:
    """Run the graph and the PyTorch student on shapes other than the traced one; the largest difference."""
    session = onnxruntime_session(path)
    checked, diff, peak = [], 0.0, 0.0
    for batch, height, width in ((1, 3 * step, 2 * step), (3, 2 * step, 4 * step)):
        inputs = onnx_inputs(config, batch, height, width, dtype, seed=batch)
        with torch.no_grad():
            ref = model(*inputs.values()).float()
        got = torch.from_numpy(session.run([OUTPUT], {k: v.numpy() for k, v in inputs.items()})[0]).float()
        diff, peak = max(diff, float((got - ref).abs().max())), max(peak, float(ref.abs().max()))
        checked.append(f"batch {batch}, {height}x{width}")
    return {"checked": tuple(checked), "max_abs_diff": diff, "max_abs_output": peak}


def export_onnx(
    student: str | Path | nn.Module, out: str | Path, *, fp16: bool = False, check: bool = True, opset: int = 17
) -> OnnxReport:
    """Write a student's UNet as an ONNX graph with dynamic batch, resolution and prompt length.

    ``student``: a UNet, or a folder (UNet or pipeline: its UNet) or anything ``pruner.load_unet`` reads;
    width-pruned students export as they are. ``fp16`` traces a half-precision copy. ``check`` runs the graph
    in onnxruntime (CPU) against the PyTorch student at two shapes other than the traced one and reports the
    largest absolute difference.
    """
    from pruner.unet.load import load_unet

    out = Path(out)
    check_new_file(out, suffix=".onnx")
    dtype = torch.float16 if fp16 else torch.float32
    unet = copy.deepcopy(student) if isinstance(student, nn.Module) else load_unet(str(student))  # caller's stays
    config: Any = unet.config
    model = OnnxUNet((unet.half() if fp16 else unet).eval(), _is_sdxl(config))
    step = 2 ** (len(config["block_out_channels"]) - 1)  # the latent must divide by every downsampler
    example = onnx_inputs(config, 2, 2 * step, 2 * step, dtype)
    with output_lock(out, "--out"), tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as folder:
        check_new_file(out, suffix=".onnx")
        _write(_trace(model, example, Path(folder), opset), out)
    inputs: dict[str, list[str | int]] = {name: ["batch", *t.shape[1:]] for name, t in example.items()}
    inputs["sample"] = ["batch", config["in_channels"], "height", "width"]
    inputs["encoder_hidden_states"] = ["batch", "sequence", config["cross_attention_dim"]]
    report = OnnxReport(out, str(dtype).removeprefix("torch."), inputs)
    if not check:
        return report
    return replace(report, **_check(model, out, config, dtype, step))
