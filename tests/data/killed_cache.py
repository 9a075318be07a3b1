"""One process of a launch (torchrun) that writes its part of a latent cache and is killed (SIGKILL) while
writing its shard number ``DIE_AT``, after the shard's bytes are on disk and before they are renamed into
place: a run killed mid-way in each process. Started by tests/data/test_many_processes.py.

    torchrun --nproc_per_node 2 tests/data/killed_cache.py DATA TEACHER OUT DIE_AT
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pruner.data.cache as cache_module
from pruner.data.cache import build_cache
from pruner.data.world import current_world
from pruner.teacher import Teacher


def main(data: str, teacher: str, out: str, die_at: int) -> None:
    real, written = cache_module.save_file, []

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        written.append(args[1])
        if len(written) == die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cache_module.save_file = save_then_die
    build_cache(data, Teacher.resolve(teacher), out, batch_size=1, shard_size=2, progress=False,
                world=current_world(cpu=True))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
