"""A throwaway local PostgreSQL server (``initdb`` + ``pg_ctl`` in a temporary folder), for tests and benchmarks.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` OS user (created when
missing), which owns the folder. It listens on a free localhost port with ``trust`` authentication and
holds one database; :meth:`TempPostgres.url` is what ``pruner search --storage`` takes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["TempPostgres", "postgres_bin"]

_SEARCH_PATHS = ("/usr/local/bin", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")), reverse=True))


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None where PostgreSQL is not installed."""
    found = shutil.which("initdb")
    candidates = ([str(Path(found).resolve().parent)] if found else []) + list(_SEARCH_PATHS)
    found_dirs = (Path(c).resolve() / "initdb" for c in candidates if (Path(c) / "initdb").exists())
    return next((p.resolve().parent for p in found_dirs if (p.resolve().parent / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, database: str = "pruner", user: str = "postgres") -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql")
        self.bindir, self.database, self.user, self.port = bindir, database, user, _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pruner-pg-"))
        self.data = self.root / "data"

    def _run(self, *args: str) -> None:
        as_user = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, cwd=self.root)

    def _own(self) -> None:
        if os.geteuid() != 0:
            return
        if subprocess.run(["id", "-u", self.user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", self.user], check=True, capture_output=True)
        shutil.chown(self.root, self.user, self.user)

    def start(self) -> TempPostgres:
        """initdb, start the server on :attr:`port` and create :attr:`database`."""
        self._own()
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")  # fmt: skip
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  self.database)  # fmt: skip
        return self

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown; the postmaster is sent SIGQUIT if that fails) and remove its folder."""
        pid_file = self.data / "postmaster.pid"
        try:
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"]
                as_user = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
                subprocess.run([*as_user, *pg_ctl], capture_output=True, cwd=self.root, check=False)
                if pid_file.exists():  # the postmaster removes it when it stops: still running, so shut it down now
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
