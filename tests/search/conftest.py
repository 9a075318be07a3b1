"""Search fixtures: a tiny latent cache, and a real PostgreSQL server started for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pruner.cli import app
from pruner.search.pgtemp import TempPostgres, postgres_bin


@pytest.fixture(scope="session")
def tiny_cache(tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("search-data")
    runner = CliRunner()
    assert runner.invoke(app, ["synth-data", "--out", str(root / "data"), "--n", "24"]).exit_code == 0
    made = runner.invoke(app, ["cache", str(root / "data"), "--teacher", tiny_sdxl_pipeline, "--out", str(root / "c")])
    assert made.exit_code == 0, made.output
    return root / "c"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own (initdb + pg_ctl in a temporary folder, a free localhost port), stopped
    at the end of the session."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine: apt-get install postgresql")
    with TempPostgres() as server:
        yield server.url()
