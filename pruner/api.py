"""pruner's public Python API: search, distill, evaluate, cache and build_student.

The CLI is one client of these functions. Each accepts objects as well as references (a
``UNet2DConditionModel`` or a hub id / folder / file as the teacher; a :class:`~pruner.recipe.Recipe` or a
YAML path as the recipe), checks every argument before any compute (a :class:`~pruner.errors.PrunerError`
naming the parameter), writes files only where asked, and leaves the caller's global state alone: torch's
random generators are forked for the call, Optuna's verbosity is restored afterwards, and progress bars are
off unless ``progress=True``. torch's thread count is the caller's too: on a machine with two cores or fewer,
``with pruner.threads("auto"):`` around the calls runs them as fast as the CLI (:func:`pruner.runtime.threads`).

Each parameter is declared once, here: its type, default and range in the signature, its help in the
docstring's ``Args:``; the checks, the CLI's options and the settings objects are read from them
(:mod:`pruner.knobs`). Nothing heavy is imported until a function runs, so the CLI starts at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pruner import defaults
from pruner.budget import parse_budget
from pruner.errors import PrunerError
from pruner.io import check_output_dir, check_output_file
from pruner.knobs import Knob, check_arguments, fields_of, shown, split_list
from pruner.runtime import out_of_memory_advice

if TYPE_CHECKING:
    import optuna
    import torch
    from diffusers import UNet2DConditionModel

    from pruner.comparison import Comparison
    from pruner.data.cache import CacheSummary
    from pruner.evaluation import EvalReport
    from pruner.metrics.scoring import MetricOptions
    from pruner.recipe import Recipe
    from pruner.unet.plan import Plan

__all__ = ["SearchResult", "build_student", "cache", "compare", "distill", "evaluate", "search"]

Status = Callable[[str], None]

# What needs less GPU memory, said in the API's parameter names (the CLI prints them as its flags).
SEARCH_MEMORY_FIX = (
    "calibrate on a cache made at 512px (pruner cache DATA --resolution 512) with fewer calibration= and held_out= "
    "rows (the README's 24 GB setting: 32 each), under a new study= name (a study's rows are fixed)"
)
DISTILL_MEMORY_FIX = (
    "turn on gradient_checkpointing= and eight_bit_adam= with mixed_precision= bf16, or lower batch_size= and "
    "raise grad_accum= to keep the batch"
)
EVAL_MEMORY_FIX = (
    "evaluate with dtype= bf16, fewer prompts at once (batch_size= 4), or at a smaller resolution= (512 for SDXL)"
)
CACHE_MEMORY_FIX = "encode fewer pictures at once: batch_size= 1"


@dataclass
class SearchResult:
    """What :func:`search` found: the study, its Pareto front as recipes, and the found recipe.

    ``found`` is the best proxy quality within budget; ``front`` every Pareto-optimal plan (cheapest
    first). ``files`` lists what was written (empty unless ``output`` was given); :meth:`save` writes later.
    """

    study: optuna.Study
    found: Recipe
    front: list[Recipe]
    storage: str
    data: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def save(self, output: str | Path) -> dict[str, Path]:
        """Write ``found.yaml``, ``front/*.yaml`` and ``front.png`` under ``output``."""
        from pruner.study.export import export_study

        self.files = export_study(self.study, Path(output))
        return self.files

    def rows(self) -> list[dict[str, Any]]:
        """The front as table rows (trial, label, params, MACs, latency, proxy KD, removed units)."""
        from pruner.study.front import front_rows

        return front_rows(self.study)


# --- the checks of arguments whose type names a heavy class (imported when a call checks one) -------------


def _teacher(value: object) -> None:
    if isinstance(value, str) and value:
        return
    from diffusers import UNet2DConditionModel

    if not isinstance(value, UNet2DConditionModel):
        raise PrunerError(f"teacher= must be a hub id, a model folder or a UNet2DConditionModel, got {shown(value)}")


def _student(value: object) -> None:
    if isinstance(value, str | Path):
        return
    from diffusers import UNet2DConditionModel

    if not isinstance(value, UNet2DConditionModel):
        raise PrunerError(f"student= must be a student folder or a UNet2DConditionModel, got {shown(value)}")


def _recipe(value: object) -> None:
    """A path must name a file; a ``Recipe`` is validated again (one changed after loading may not be valid)."""
    if isinstance(value, str | Path):
        if not Path(value).is_file():
            raise PrunerError(f"recipe= {str(value)!r} is not a file: give a recipe YAML (from search) or a Recipe")
        return
    from pruner.recipe import Recipe, revalidate

    if not isinstance(value, Recipe):
        raise PrunerError(f"recipe= must be a Recipe or the path of a recipe YAML, got {shown(value)}")
    revalidate(value, "recipe=")


def _plan(value: object) -> None:
    if isinstance(value, str | Path) or (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)):
        return
    from pruner.recipe import Recipe, revalidate
    from pruner.unet.plan import Plan

    if isinstance(value, Recipe):
        revalidate(value, "plan=")
    elif not isinstance(value, Plan):
        raise PrunerError(f"plan= must be a Plan, a Recipe, a recipe YAML or unit names, got {shown(value)}")


def _device(value: object) -> None:
    if value is None or isinstance(value, str):
        return
    import torch

    if not isinstance(value, torch.device):
        raise PrunerError(f"device= must be a device name (cpu, cuda, cuda:1) or a torch.device, got {shown(value)}")


def _budget(value: str) -> None:
    parse_budget(value)  # its message names the budget and the forms it takes


def _objectives(value: str | Sequence[str]) -> None:
    if "quality" not in split_list(value):
        raise PrunerError(f"objectives= takes quality plus any of macs, params, latency, got {shown(value)}")


# --- the API ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _caller_state_kept() -> Iterator[None]:
    """Fork torch's generators (CPU and every visible GPU) and restore Optuna's verbosity."""
    import optuna
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    verbosity = optuna.logging.get_verbosity()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def cache(
    data: str | Path,
    output: Annotated[str | Path, Knob(flag="--out")],
    *,
    teacher: str = defaults.TEACHER,
    resolution: Annotated[int | None, Knob(min=8)] = None,
    batch_size: Annotated[int, Knob(min=1)] = 16,
    device: str | None = None,
    image_column: str = "image",
    caption_column: str = "text",
    caption_seed: int | None = None,
    split: str | None = None,
    revision: str | None = None,
    config: str | None = None,
    streaming: bool = False,
    max_rows: Annotated[int | None, Knob(min=1)] = None,
    progress: bool = False,
) -> CacheSummary:
    """Encode pictures and captions into a latent cache that :func:`search` and :func:`distill` take as ``data``.

    Unreadable pictures, missing captions and damaged tar members are skipped and counted; calling again on
    the same ``output`` resumes. Under ``accelerate launch`` (or torchrun) each process encodes its own row
    range of the source on its own device, and the last to finish writes the cache's one index.

    Args:
        data: Image folder with metadata.jsonl, `datasets` folder/parquet/arrow/Hub id, or tars (shards/{0..9}.tar).
        output: Cache folder to create or resume.
        teacher: Pipeline whose VAE and text encoders encode the data.
        resolution: Side in pixels; default the teacher's native size (512 for SDXL on a 24 GB card).
        batch_size: Images encoded per batch.
        device: cuda, cuda:1 or cpu; default cuda when available.
        image_column: Column of a `datasets` set holding the pictures.
        caption_column: Column of a `datasets` set holding the captions (for tars: the KEY.json key when no KEY.txt).
        caption_seed: With several captions per picture, pick one by this seed (default: the first).
        split: Split of a `datasets` set (default train).
        revision: Hub revision (branch, tag or commit) of a Hub dataset.
        config: Configuration name of a Hub dataset.
        streaming: Stream a Hub dataset instead of downloading it (needs --max-rows).
        max_rows: Cache at most this many rows.
        progress: Show a progress bar.
    """
    check_arguments(cache, locals())
    from pruner.data.cache import build_cache
    from pruner.data.resolve import open_source
    from pruner.data.sources.hf import HFColumns
    from pruner.data.world import current_world
    from pruner.device import resolve_device
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here: the cache reads the resolved teacher
    with _caller_state_kept(), out_of_memory_advice("encoding the data", CACHE_MEMORY_FIX):
        check_output_dir(Path(output).expanduser(), "cache folder")  # before the data is read: the cheaper mistake
        source = open_source(data, columns=HFColumns(image_column, caption_column, caption_seed), split=split,
                             revision=revision, config=config, streaming=streaming, max_rows=max_rows)  # fmt: skip
        on = resolve_device(device)
        return build_cache(source, resolved, output, resolution=resolution, batch_size=batch_size, progress=progress,
                           device=on, world=current_world(cpu=on.type == "cpu"))  # fmt: skip


def search(
    teacher: Annotated[str | UNet2DConditionModel, Knob(check=_teacher)],
    budget: Annotated[str, Knob(check=_budget)] = defaults.BUDGET,
    *,
    data: str | Path | None = None,
    prompts: str | Path | None = None,
    trials: Annotated[int, Knob(min=1)] = defaults.TRIALS,
    objectives: Annotated[
        str | Sequence[str], Knob(choices=defaults.OBJECTIVE_NAMES, check=_objectives)
    ] = defaults.OBJECTIVES,
    space: str = defaults.SPACE,
    proxy_steps: Annotated[int, Knob(min=0)] = defaults.PROXY_STEPS,
    top_steps: Annotated[int | None, Knob(min=0)] = None,
    sampler: Annotated[str, Knob(choices=defaults.SAMPLERS)] = defaults.SAMPLER,
    noise_seeds: Annotated[int, Knob(min=0)] = defaults.NOISE_SEEDS,
    confirm_steps: Annotated[int | None, Knob(min=0)] = defaults.CONFIRM_STEPS,
    confirm_calibration: Annotated[int | None, Knob(min=4)] = defaults.CONFIRM_CALIBRATION,
    confirm_lead: Annotated[float | None, Knob(min=0, max=1)] = defaults.CONFIRM_LEAD,
    confirm_runners_up: Annotated[int, Knob(min=0)] = defaults.CONFIRM_RUNNERS_UP,
    calibration: Annotated[int, Knob(min=4)] = defaults.CALIBRATION,
    held_out: Annotated[int, Knob(min=2)] = defaults.HELD_OUT,
    refill: bool = defaults.REFILL,
    anchor: Annotated[str, Knob(choices=defaults.ANCHOR_CHOICES)] = defaults.ANCHOR,
    module_sensitivity: bool = defaults.MODULE_SENSITIVITY,
    storage: str | None = None,
    study: str | None = None,
    seed: Annotated[int, Knob(min=0)] = 0,
    device: str | None = None,
    mixed_precision: Annotated[str | None, Knob(choices=defaults.PRECISIONS)] = None,
    output: Annotated[str | Path | None, Knob(flag="--out")] = None,
    progress: bool = False,
    status: Status | None = None,
) -> SearchResult:
    """Search which units of ``teacher`` to remove to meet ``budget``.

    An Optuna multi-objective study scores each plan by a short layer-level KD fine-tune on ``data`` (a latent
    cache), or on latents the teacher generates from ``prompts``, and by cost. Plans are scored at rising
    fidelity: zero-shot KD for every plan, ``proxy_steps`` of KD for the better half, ``top_steps`` for the best
    third of those (each rung from the freshly built student, in one cosine segment); the best plan among these
    is re-scored with ``noise_seeds`` other row orders (the spread is stored as the study's ``noise_floor``),
    and the found plan is it only when its lead over the sensitivity one-shot seed, scored with the same orders,
    exceeds twice its standard error and a fifth of the seed's score (where those scores cannot tell, both
    plans are trained again ``confirm_steps`` on ``confirm_calibration`` rows and compared once more, the lead
    to show then ``confirm_lead``); else the seed (why:
    the study's ``found_choice``, the recipe's ``provenance.choice``). Everything runs on ``device``, the teacher
    frozen in half precision on a GPU (or wherever ``mixed_precision`` is bf16 or fp16). On a CPU with two
    cores or fewer, call it inside ``with pruner.threads("auto"):`` (what the CLI does; several times faster).

    Args:
        teacher: Teacher: hub id, pipeline or UNet folder, or tiny-sdxl (the bundled one); from Python also a
            UNet2DConditionModel loaded from one of those.
        budget: Size limit naming its unit: 0.74B, 740M, 45% (of the teacher's params), macs=2.8T, macs=60%,
            latency=40ms or latency=60% (per UNet call at batch 2, estimated from module times measured once).
        data: Latent cache (from `pruner cache`) to calibrate on.
        prompts: No dataset: prompts file; the teacher generates the latents.
        trials: Trials in the study (a re-run resumes up to this many).
        objectives: Minimised: quality plus macs, params or latency (a list, or one comma-separated string).
        space: Search space: a built-in (default, depth-only, depth-width), search/NAME.yaml by name, or a file.
        proxy_steps: KD steps for the better half of plans (every plan is scored zero-shot first).
        top_steps: KD steps for the best third of those, trained again from the pruned student; the found plan
            is chosen among them (default 10/3 of ``proxy_steps``: 100 for 30; at most ``proxy_steps``: two
            rungs only).
        sampler: mutation (mutations and crossovers of the best scored plans, biased by unit sensitivity),
            nsga2 or tpe (multivariate).
        noise_seeds: Re-score the best plan (and the seed, where its lead is close) with this many other row
            orders: the noise floor, and whether the lead over the seed is clear (0: the best plan, unchecked).
        confirm_steps: When those scores settle neither way (the lead neither clear and a fifth of the seed's
            score, nor surely under ``confirm_lead``), train both plans again this many KD steps in one cosine
            segment on ``confirm_calibration`` rows under three fresh row orders and decide on those (default:
            the top rung's steps; 0: never, the seed is named then).
        confirm_calibration: Calibration rows the confirmation trains on (None: the search's own). With the
            top rung's 100 steps, 384 rows and an 8% lead it named the four 50% plans of the benchmarks that
            ended 1.27-1.34x better than the seed and named none that ended behind it; it turned down a 30%
            plan that ended 1.13x better (docs/benchmarks/search-oracle.md).
        confirm_lead: The lead, as a share of the seed's score, that the confirmation must show (clear as well)
            to name the sampled plan (None: a fifth, the top rung's own threshold).
        confirm_runners_up: Where the rule names the seed, also confirm up to this many next-best sampled plans
            at the top rung (each within a fifth of the seed's score there), trained as the confirmation trains;
            the clearest lead that carries names its plan (0: none). With --refill, 1000 confirmation steps and
            3, the 30% searches of the benchmark named plans 1.049x, 1.006x, 1.006x and 1.006x of the best found
            at four search seeds of five (the seed is 1.109x), at 20% one 1.11x better than the seed, at 40% one
            1.02x better at one search of three, for 5-13 minutes more a search on two cores (at 50% the rule
            never kept the seed: nothing to confirm). Without --refill it named no better plan at 30%, 40% or 50%;
            1000-step leads of 4-10% belonged to plans that ended level or up to 9% behind the seed (every lead
            of 10% or more to one that ended ahead), so pair it with ``confirm_lead`` 0.12
            (docs/benchmarks/search-oracle.md).
        calibration: Calibration rows the proxy trains on.
        held_out: Rows (fixed noise and timesteps) the proxy scores on; more ranks steadier.
        refill: The mutation sampler may also return one layer to an attention module the plan empties (a
            move the one-shot seed cannot make; off: alone, over three seeds at four budgets it did not change
            what found.yaml names beyond noise, as its plans' leads are too small for the top rung; with
            ``confirm_runners_up`` it named better plans at 20%, 30% and 40%).
        anchor: The one-shot seed found.yaml falls back to, and the bar a sampled plan must clearly beat:
            ``sensitivity-refilled`` (the default): the sensitivity seed with one layer returned to the dearest
            attention module it empties, paid for with other attention layers (where it empties none, the
            sensitivity seed itself); or ``sensitivity``: the least sensitive units removed first. Distilled in
            full the refill ended 1.03-1.58x better than the sensitivity seed at five budgets on the bundled
            teacher (at 30% the oracle's best plan), and the searches with it were never behind the sensitivity
            seed (docs/benchmarks/search-oracle.md).
        module_sensitivity: Also measure each attention module's sensitivity (its layers removed together):
            adds the sensitivity-modules seed and weights the refill move.
        storage: Optuna storage: sqlite:///x.db, postgresql://user@host/db or journal:PATH (workers share it;
            a rerun resumes); default in memory from Python, sqlite under search/runs/ from the CLI.
        study: Study name; default from teacher, budget and space.
        seed: Seeds the sampler, calibration noise and proxy training.
        device: Where the teacher, calibration and proxy run: cuda, cuda:1, cpu; default where a given teacher
            model lives, else cuda when available. One worker per GPU: ``device`` cuda:k with a shared
            ``storage``.
        mixed_precision: Autocast of the proxy's students: no, bf16 or fp16; default bf16 on a GPU. bf16/fp16
            also freeze the teacher in that precision (on a CPU too: half the memory).
        output: Where found.yaml, front/*.yaml and front.png go (from Python: nowhere unless given).
        progress: Show a progress bar.
        status: Called with a line of news at each stage (loading, calibrating, the noise floor).
    """
    arguments = dict(locals())
    check_arguments(search, arguments)
    from pruner.study.config import SearchConfig
    from pruner.study.export import study_recipes
    from pruner.study.study import run_search
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here: the search, its recipes and its export read this one
    if output is not None:
        check_output_dir(output, "output folder")  # before any compute
    settings = {**fields_of(SearchConfig, arguments), "teacher": resolved.reference, "data": _text(data),
                "prompts": _text(prompts), "objectives": split_list(objectives), "storage": storage or "memory",
                "out": None if output is None else Path(output)}  # fmt: skip
    with _caller_state_kept(), out_of_memory_advice("searching", SEARCH_MEMORY_FIX):
        raw = run_search(SearchConfig(**settings), resolved, status=status or (lambda _m: None))
    found, front = study_recipes(raw.study, resolved)
    written = {"found": raw.found, "front_dir": raw.front_dir, "plot": raw.plot}
    files = {k: v for k, v in written.items() if v is not None}
    return SearchResult(raw.study, found, front, raw.storage, raw.data, files)


def distill(
    recipe: Annotated[Recipe | str | Path, Knob(check=_recipe)],
    output: str | Path,
    *,
    data: str | Path | None = None,
    steps: Annotated[int | None, Knob(min=1)] = None,
    batch_size: Annotated[int | None, Knob(min=1)] = None,
    mixed_precision: Annotated[str, Knob(choices=defaults.PRECISIONS)] = "no",
    gradient_checkpointing: bool = False,
    eight_bit_adam: Annotated[bool, Knob(flag="--8bit-adam")] = False,
    grad_accum: Annotated[int, Knob(min=1)] = 1,
    ema_decay: Annotated[float | None, Knob(min=0, max=1)] = None,
    checkpoint_every: Annotated[int | None, Knob(min=1)] = None,
    validate_every: Annotated[int | None, Knob(min=1)] = None,
    validation_prompts: str | Path | None = None,
    report_to: Annotated[str | Sequence[str], Knob(choices=defaults.REPORT_TO)] = "tensorboard",
    resume: bool = False,
    seed: Annotated[int, Knob(min=0)] = 0,
    progress: bool = False,
) -> Path:
    """Train ``recipe``'s student to convergence (its stages, or ``steps`` in all) and save it in ``output``.

    The output is a diffusers folder (``unet/`` with safetensors, plus the teacher's other components when
    the teacher is a pipeline), with the recipe, metrics, a validation grid and TensorBoard logs. Run it
    under ``accelerate launch`` for many GPUs. Returns ``output``. On a CPU with two cores or fewer, call it
    inside ``with pruner.threads("auto"):`` (what the CLI does; several times faster).

    Args:
        recipe: Recipe: a YAML file (from `pruner search` or recipes/), or a Recipe.
        output: Output folder (the CLI's default: outputs/<recipe name>).
        data: Latent cache from `pruner cache`; optional for tiny-sdxl.
        steps: Total steps, overriding the recipe's (a quick run).
        batch_size: Batch size per device; default the recipe's.
        mixed_precision: Autocast precision: no, fp16 or bf16 (the frozen teacher too; always half on a GPU).
        gradient_checkpointing: Recompute activations in the backward pass: less memory, slower.
        eight_bit_adam: bitsandbytes' 8-bit AdamW (less GPU memory; extra 'pruner[gpu]').
        grad_accum: Gradient accumulation steps.
        ema_decay: Keep an EMA of the weights (e.g. 0.999); saved at the end.
        checkpoint_every: Checkpoint every N steps.
        validate_every: Held-out KD loss and a teacher | student picture grid (logged to the trackers, kept
            under validation/) every N steps.
        validation_prompts: Prompts file for the validation grids, one a line; default captions of held-out rows.
        report_to: Experiment trackers, comma-separated: tensorboard (logs/), wandb, mlflow, comet_ml, or all
            (those installed); through accelerate.
        resume: Continue from the last complete checkpoint.
        seed: Seeds sampling, noise and caption dropout.
        progress: Show a progress bar of each stage with its loss terms.
    """
    arguments = dict(locals())
    check_arguments(distill, arguments)
    from pruner.distillation.run import DistillOptions, distill_recipe

    opts = DistillOptions(**{**fields_of(DistillOptions, arguments), "data": _text(data),
                             **_watching(report_to, validation_prompts)})  # fmt: skip
    with _caller_state_kept(), out_of_memory_advice("distilling", DISTILL_MEMORY_FIX):
        return distill_recipe(recipe, Path(output), opts).output


def _watching(report_to: str | Sequence[str], prompts_file: str | Path | None) -> dict[str, Any]:
    """The trackers to start and the validation prompts read, both refused in one line before any compute."""
    from pruner.distillation.tracking import tracker_names
    from pruner.io import read_prompts

    prompts = () if prompts_file is None else tuple(read_prompts(prompts_file, _count_prompts(prompts_file)))
    return {"report_to": tracker_names(report_to), "validation_prompts": prompts}


def _count_prompts(path: str | Path) -> int:
    """How many prompts a file holds (its non-blank lines; read_prompts refuses an unreadable or empty one)."""
    try:
        return max(1, sum(1 for line in Path(path).read_text().splitlines() if line.strip()))
    except (OSError, UnicodeDecodeError):
        return 1


def evaluate(
    student: Annotated[str | Path | UNet2DConditionModel, Knob(check=_student)],
    teacher: str,
    *,
    n_prompts: Annotated[int, Knob(min=1, flag="--n")] = defaults.EVAL_PROMPTS,
    steps: Annotated[int, Knob(min=1)] = defaults.EVAL_STEPS,
    guidance_scale: Annotated[float, Knob(min=0, flag="--guidance")] = defaults.GUIDANCE,
    seed: Annotated[int, Knob(min=0)] = 0,
    prompts_file: Annotated[str | Path | None, Knob(flag="--prompts")] = None,
    grid: str | Path | None = None,
    device: str | None = None,
    resolution: Annotated[int | None, Knob(min=8)] = None,
    dtype: Annotated[str, Knob(choices=defaults.EVAL_DTYPES)] = "auto",
    batch_size: Annotated[int, Knob(min=1)] = defaults.EVAL_BATCH,
    metrics: Annotated[str | Sequence[str] | None, Knob(choices=defaults.FIELD_METRICS)] = None,
    reference: str | Path | None = None,
    fid_features: Annotated[str, Knob(check=_fid_features)] = "auto",
    clip_model: str | None = None,
    keep_pictures: str | Path | None = None,
    pickscore_model: str | None = None,
    imagereward_model: str | None = None,
    hpsv2_model: str | None = None,
    reference_split: str | None = None,
    reference_n: Annotated[int | None, Knob(min=2)] = None,
) -> EvalReport:
    """Compare a student with its teacher pipeline on held-out prompts: KD loss, PSNR of pictures from the
    same seeds, prompt accuracy (bundled teacher), latency of both; a teacher | student grid if ``grid``.

    A student given as a model comes back on its own device and dtype.

    Args:
        student: Student folder (a stock diffusers UNet folder or a pipeline folder), or a UNet2DConditionModel.
        teacher: Teacher pipeline: hub id, pipeline folder, or tiny-sdxl.
        n_prompts: Number of prompts (and of pictures per model).
        steps: Sampling steps per picture.
        guidance_scale: Classifier-free guidance scale.
        seed: Seeds the prompts, noise and timesteps.
        prompts_file: Prompts file, one a line (default for tiny-sdxl: captions not in its data).
        grid: PNG grid, teacher row above student row (from Python: none unless given).
        device: cuda, cuda:1 or cpu; default cuda when available.
        resolution: Side in pixels of pictures and latency inputs; default the teacher's (512 makes a quick
            check of an SDXL student).
        dtype: What both UNets and the pipeline run in: auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16 or
            fp16; the latency row is this dtype's.
        batch_size: Prompts generated at once (each a classifier-free-guidance pair); the pictures do not
            depend on it.
        metrics: Field metrics to add, comma-separated: fid, kid (of the student's pictures against the
            reference), clip (CLIP score of student and teacher), by torchmetrics, extra 'pruner[metrics]'; the
            preference scores pickscore (transformers), imagereward and hpsv2 (extra 'pruner[preference]').
        reference: FID/KID reference, read as `pruner cache` reads data: a folder of pictures (e.g. MS-COCO
            val2014), a `datasets` save_to_disk folder, parquet files or Hub id, or tar shards (shards/{0..9}.tar);
            default the teacher's own pictures of the same prompts and seeds.
        fid_features: FID/KID features: inception (torch-fidelity's Inception-v3, the field's), judge (the
            bundled teacher's judge), an Inception weights file, or auto (judge on tiny-sdxl, else inception).
        clip_model: CLIP for the CLIP score, hub id or folder; default openai/clip-vit-large-patch14 (tiny-sdxl:
            its own shape CLIP).
        keep_pictures: Folder to keep the pictures in (teacher/, student/ as 00000.png ..., prompts.txt), so
            that metrics can be recomputed (e.g. reference= its teacher/).
        pickscore_model: PickScore's CLIP, hub id or folder; default yuvalkirstain/PickScore_v1 with the processor
            of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tiny-sdxl: its own shape CLIP).
        imagereward_model: ImageReward's weights: ImageReward-v1.0 (downloaded), or an ImageReward.pt file or
            folder with med_config.json beside it.
        hpsv2_model: HPSv2's weights: v2.1 (default) or v2.0 from the Hub's xswu/HPSv2, or a checkpoint file.
        reference_split: Split of a `datasets` reference (default train).
        reference_n: Read at most this many reference pictures (default all).
    """
    check_arguments(evaluate, locals())
    _check_enough_pictures(metrics, n_prompts)
    from pruner.evaluation import evaluate_student, kept_pictures
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here
    if grid is not None:
        check_output_file(grid, "grid file")  # before any compute
    if keep_pictures is not None:
        check_output_dir(keep_pictures, "keep_pictures= folder")
    settings = _evaluation_settings(locals())
    with (
        _caller_state_kept(),
        out_of_memory_advice("evaluating", EVAL_MEMORY_FIX),
        kept_pictures(keep_pictures) as keep,
    ):
        return evaluate_student(student, resolved, on_pictures=keep, **settings)


def _evaluation_settings(arguments: dict[str, Any]) -> dict[str, Any]:
    """``evaluate``'s checked knobs as ``evaluate_student`` takes them (paths as Paths, the field metrics'
    knobs as one MetricOptions); :func:`compare` passes the same to each student's evaluation."""
    a = arguments
    return {
        "n_prompts": a["n_prompts"], "steps": a["steps"], "guidance_scale": a["guidance_scale"], "seed": a["seed"],
        "prompts_file": None if a["prompts_file"] is None else Path(a["prompts_file"]),
        "grid_path": None if a["grid"] is None else Path(a["grid"]), "device": a["device"],
        "resolution": a["resolution"], "dtype": a["dtype"], "batch_size": a["batch_size"],
        "metric_options": _metric_options(a),
    }  # fmt: skip


def compare(
    students: Sequence[str | Path | UNet2DConditionModel], teacher: str = defaults.TEACHER, **options: Any
) -> Comparison:
    """Teacher and several students on the same prompts and seeds: one row each of params, MACs, latency, KD
    loss, PSNR, prompt accuracy and the field metrics asked for, and (``grid=``) one captioned grid, teacher row
    above one row per student. ``options`` are :func:`evaluate`'s (checked as it checks them)."""
    import inspect

    declared = inspect.signature(evaluate).parameters
    unknown = sorted(set(options) - set(declared) - {"grid"}) or sorted(
        {"student", "teacher", "keep_pictures"} & set(options)
    )
    if unknown:
        raise PrunerError(f"compare takes evaluate's options; {unknown[0]}= is not one of them")
    if not students:
        raise PrunerError("students= names no student; give one student folder or more")
    arguments = {k: p.default for k, p in declared.items() if k not in ("student", "teacher")} | options
    check_arguments(evaluate, {"teacher": teacher, **arguments})
    _check_enough_pictures(arguments["metrics"], arguments["n_prompts"])
    for student in students:
        check_arguments(evaluate, {"student": student})
    from pruner.comparison import compare_students
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)
    if arguments["grid"] is not None:
        check_output_file(arguments["grid"], "grid file")
    with _caller_state_kept(), out_of_memory_advice("evaluating", EVAL_MEMORY_FIX):
        return compare_students(list(students), resolved, **_evaluation_settings(arguments))


def _check_enough_pictures(metrics: str | Sequence[str] | None, n_prompts: int) -> None:
    """FID needs two pictures a set, KID four (its subsets are half the smaller set): refused before compute."""
    asked = split_list(metrics or ())
    least = 4 if "kid" in asked else 2 if "fid" in asked else 1
    if n_prompts < least:
        raise PrunerError(
            f"n_prompts= {n_prompts} is too few for {'kid' if least == 4 else 'fid'}: use at least {least}"
        )


def _fid_features(value: str) -> None:
    if value not in ("auto", "inception", "judge") and not Path(value).is_file():
        raise PrunerError(f"fid_features= {value} is none of auto, inception, judge, nor an Inception weights file")


def _metric_options(a: dict[str, Any]) -> MetricOptions:
    """The field metrics' knobs of ``evaluate`` as one MetricOptions."""
    from pruner.metrics.preference import PREFERENCE
    from pruner.metrics.scoring import MetricOptions

    reference = None if a["reference"] is None else str(a["reference"])
    models = {m: a[f"{m}_model"] for m in PREFERENCE}
    return MetricOptions(split_list(a["metrics"] or ()), reference, a["fid_features"], a["clip_model"], models,
                         a["reference_split"], a["reference_n"])  # fmt: skip


def _as_plan(plan: Plan | Recipe | Sequence[str] | str | Path) -> Plan:
    from pruner.recipe import Recipe, load_recipe
    from pruner.unet.plan import Plan

    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Recipe):
        return plan.plan_obj()
    if isinstance(plan, Path) or (isinstance(plan, str) and plan.endswith((".yaml", ".yml"))):
        return load_recipe(plan).plan_obj()
    if isinstance(plan, str):
        return Plan.removing([plan])
    return Plan.removing(list(plan))


def build_student(
    teacher: Annotated[str | UNet2DConditionModel, Knob(check=_teacher)],
    plan: Annotated[Plan | Recipe | Sequence[str] | str | Path, Knob(check=_plan)],
    *,
    device: Annotated[str | torch.device | None, Knob(check=_device)] = None,
) -> UNet2DConditionModel:
    """The student ``plan`` makes of ``teacher``, initialised from the teacher's weights (untrained).

    Magnitude-ranked feed-forward channels where the plan narrows widths.

    Args:
        teacher: Hub id, pipeline or UNet folder, tiny-sdxl, or a UNet2DConditionModel.
        plan: A Plan, a recipe (object or YAML path), or unit names to remove
            (``down_blocks.2.attentions.0.transformer_blocks.3-9`` names a run).
        device: Where the student is built; default the teacher's.
    """
    check_arguments(build_student, locals())
    from pruner.teacher import Teacher
    from pruner.unet.surgery import build_student as build

    model = Teacher.resolve(teacher).load() if isinstance(teacher, str) else teacher
    student, _ = build(model, _as_plan(plan), device=device)
    return student
