"""Stop a run cleanly on USR1, and mark a stage finished: the trainer's half of the requeue contract.

The batch script (launch/sbatch.py) forwards USR1 to every task before the time limit or on preemption;
`scancel --signal=USR1 <job>` sends it to the tasks directly. Ranks receive it at slightly different
moments, so the trainer asks at each step boundary whether *any* rank was signalled (one small
all-reduce) and all ranks stop after the same step:

    stop = StopSignal.install()                 # before the first step
    for step in range(start, train_iters):
        train_step(...)
        if stop.requested_everywhere():
            save_checkpoint(step)               # then return normally: exit status 0, no FINISHED
            return
    save_checkpoint(train_iters)
    mark_finished()                             # the job will not requeue

The script requeues a stage that exits without FINISHED after a signal, and resumes it from the last
checkpoint; it never requeues one that wrote FINISHED.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

from megatron_qwen.platform.files import write_atomic

# The launcher sets this to the stage's FINISHED marker file; the trainer writes it when the stage completes.
FINISHED_ENV = "MEGATRON_QWEN_FINISHED_FILE"



class StopSignal:
    """A flag set by a signal handler (USR1 by default), and a collective check of it."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1,)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @classmethod
    def install(cls, signals: tuple[int, ...] = (signal.SIGUSR1,)) -> StopSignal:
        stop = cls(signals)
        for signum in signals:
            stop._previous[signum] = signal.signal(signum, stop._handle)
        return stop

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    @property
    def requested(self) -> bool:
        """This process was signalled."""
        return self.received is not None

    def requested_everywhere(self, group=None) -> bool:
        """Some rank was signalled (the same answer on every rank; a collective call)."""
        from megatron_qwen.platform.collectives import any_rank

        return any_rank(self.requested, group)


def finished_file() -> Path | None:
    """Where this stage's FINISHED marker goes, as exported by the launcher (None outside a launch)."""
    value = os.environ.get(FINISHED_ENV)
    return Path(value) if value else None


def mark_finished(path: Path | None = None, rank: int | None = None) -> Path | None:
    """Write the FINISHED marker (rank 0 only; atomically). Call after the final checkpoint is saved."""
    path = path or finished_file()
    if path is None:
        return None
    if rank is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "finished\n")
    return path
