"""What a search is asked to do: its settings, and the objectives and samplers it knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pruner import defaults
from pruner.study.rungs import rung_steps

__all__ = ["OBJECTIVES", "SAMPLERS", "SearchConfig"]

OBJECTIVES = {"quality", "macs", "params", "latency"}
SAMPLERS = ("mutation", "nsga2", "tpe")


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search (what `pruner search` and `pruner.search` are given), references unresolved."""

    teacher: str = defaults.TEACHER
    budget: str = defaults.BUDGET
    objectives: tuple[str, ...] = defaults.OBJECTIVES
    trials: int = defaults.TRIALS
    proxy_steps: int = defaults.PROXY_STEPS  # rung 1: KD steps for the better half of plans
    top_steps: int | None = None  # top rung: KD steps in all for the best of those; None: 10/3 x proxy_steps
    sampler: str = defaults.SAMPLER
    noise_seeds: int = defaults.NOISE_SEEDS  # the found plan scored again with other row orders: the noise floor
    confirm_steps: int | None = defaults.CONFIRM_STEPS  # too close to call: both trained again (None: by schedule)
    confirm_calibration: int | None = defaults.CONFIRM_CALIBRATION  # ...on this many rows (None: the search's)
    confirm_lead: float | None = defaults.CONFIRM_LEAD  # ...and the lead they must show (None: MIN_LEAD)
    confirm_runners_up: int = defaults.CONFIRM_RUNNERS_UP  # where the seed is named: its runners-up confirmed too
    data: str | None = None
    prompts: str | None = None
    space: str = defaults.SPACE
    storage: str | None = None
    study: str | None = None
    out: Path | None = Path("recipes")  # None: write no files (the Python API's default)
    seed: int = 0
    calibration: int = defaults.CALIBRATION
    held_out: int = defaults.HELD_OUT
    refill: bool = defaults.REFILL  # the sampler may return a layer to an emptied attention module
    anchor: str = defaults.ANCHOR  # the seed found.yaml falls back to: sensitivity-refilled or sensitivity
    module_sensitivity: bool = defaults.MODULE_SENSITIVITY  # measure each attention module's sensitivity too
    progress: bool = True
    device: str | None = None  # None: cuda when available
    mixed_precision: str | None = None  # None: bf16 on a GPU (fp16 where bf16 is missing), no on a CPU
    proxy_batch: int | None = None  # None: by resolution (pruner.study.proxy.proxy_batch)

    @property
    def rungs(self) -> tuple[int, ...]:
        """KD steps at each fidelity: 0 (zero-shot), ``proxy_steps``, ``top_steps`` (dropping empty rungs)."""
        return rung_steps(self.proxy_steps, self.top_steps)
