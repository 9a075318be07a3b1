"""Defaults that the Python API, the command line and the configurations share, each stated once.

A default changed here changes ``pruner.search(...)``, ``pruner search --help`` and ``SearchConfig`` alike.
"""

from __future__ import annotations

TEACHER = "tiny-sdxl"  # the bundled teacher: the CLI's default, so a first command runs without weights

# search
BUDGET = "50%"
OBJECTIVES = ("quality", "macs")
TRIALS = 24
PROXY_STEPS = 30  # rung 1: KD steps for the better half of plans
SAMPLER = "mutation"
NOISE_SEEDS = 2  # the found plan scored again with this many other row orders: the noise floor
CONFIRM_STEPS = None  # the found-plan rule's confirmation: KD steps in one segment (0: none; None: the top rung's)
CONFIRM_CALIBRATION = 384  # rows the confirmation trains on (None: the search's): docs/benchmarks/search-oracle.md,
# "The confirmation by default"
CONFIRM_LEAD = 0.08  # the lead the confirmation must show, a share of the seed's score (None: the rule's fifth)
CONFIRM_RUNNERS_UP = 0  # where the rule names the seed, confirm this many next-best plans too (a 30% benchmark)
SPACE = "default"
CALIBRATION = 96  # rows the proxy trains on (384 ranked no better at 20%: README, proxy fidelity)
HELD_OUT = 128  # rows the proxy scores on (32 let one fine-tune's noise reorder close plans)
REFILL = False  # the sampler's move returning a layer to an emptied attention module (off: issue #31, item 4)
ANCHOR = "sensitivity-refilled"  # the one-shot plan found.yaml falls back to: the refill where one exists (#31)
ANCHOR_CHOICES = ("sensitivity", "sensitivity-refilled")
MODULE_SENSITIVITY = False  # each attention module's sensitivity too: a seed and the refill move's weights

# evaluation
EVAL_PROMPTS = 64
EVAL_STEPS = 20
EVAL_BATCH = 16  # prompts evaluation generates at once (each a classifier-free-guidance pair)
GUIDANCE = 5.0

# the names a knob takes (the API's checks and the CLI's help read them here, without importing torch)
OBJECTIVE_NAMES = ("quality", "macs", "params", "latency")  # quality plus any of the others
SAMPLERS = ("mutation", "nsga2", "tpe")
PRECISIONS = ("no", "fp16", "bf16")  # autocast of the student (the frozen teacher too)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml")  # what distill(report_to=) starts through accelerate
REPORT_TO = (*TRACKERS, "all")
# what evaluate(metrics=) adds to its own; pruner.metrics computes them (the last three: pruner.metrics.preference)
FIELD_METRICS = ("fid", "kid", "clip", "pickscore", "imagereward", "hpsv2")
EVAL_DTYPES = ("auto", "fp32", "bf16", "fp16")  # what evaluation runs both UNets in; auto: bf16 on a GPU
