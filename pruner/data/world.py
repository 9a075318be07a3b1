"""This process's place in a launch of several (``accelerate launch``, ``torchrun``, MPI), and the share of
rows it takes.

Why a module of its own: ``pruner cache`` splits a source across processes by row range, and what a rank
is, how many there are and which accelerator each one drives is accelerate's to say (``PartialState``),
not ours. One process is the default everywhere; only a caller that asks (the ``pruner cache`` command and
``pruner.cache``) looks at the launch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["World", "current_world", "launched", "row_range"]

# The variables by which launchers say how many processes run (torchrun/accelerate; MPI's, which
# accelerate's PartialState reads for several CPU processes).
_SIZE_VARIABLES = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]


@dataclass(frozen=True)
class World:
    """Process ``rank`` of ``size``, one of ``here`` on this machine; ``device`` is the accelerator accelerate
    assigned this process (``cuda:LOCAL_RANK``), None on the CPU or with one process."""

    rank: int = 0
    size: int = 1
    device: str | None = None
    here: int = 1


def launched() -> bool:
    """Whether a launcher started this process as one of several (its environment says more than one)."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(_SIZE_VARIABLES, 1) > 1


def current_world(cpu: bool = False) -> World:
    """The launch this process runs in, from accelerate's ``PartialState`` (which joins the process group the
    launcher set up: nccl between GPUs; gloo between CPU processes when ``cpu``, the run's device being the
    CPU); one process when no launcher started it. Nothing is initialised outside a launch, so a plain Python
    caller's later ``Accelerator`` is not constrained."""
    if not launched():
        return World()
    from accelerate import PartialState
    from accelerate.utils import get_int_from_env

    state = PartialState(cpu=cpu)
    device = state.device if state.device is not None and state.device.type != "cpu" else None
    here = get_int_from_env(["LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"], state.num_processes)
    return World(state.process_index, state.num_processes, None if device is None else str(device), here)


def row_range(n_rows: int, part: int, parts: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``part`` when ``n_rows`` are cut into ``parts`` contiguous ranges whose
    sizes differ by at most one; read in part order, the parts give the rows in their source order."""
    return part * n_rows // parts, (part + 1) * n_rows // parts
