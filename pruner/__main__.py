"""``python -m pruner`` (and ``accelerate launch -m pruner distill ...``) runs the CLI."""

from pruner.cli import app

app()
