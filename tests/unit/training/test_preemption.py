"""The trainer's half of the requeue contract: USR1 sets a flag every rank agrees on; FINISHED marker."""

import os
import signal

import pytest

from megatron_qwen.platform.spawn import run_workers
from megatron_qwen.training.preemption import FINISHED_ENV, StopSignal, finished_file, mark_finished


def test_usr1_sets_the_flag_and_uninstall_restores_the_handler():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopSignal.install()
    try:
        assert not stop.requested and not stop.requested_everywhere()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.received == signal.SIGUSR1
        assert stop.requested_everywhere()  # no process group: the local flag
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


def _agree(signalled_rank: int) -> list[bool]:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        stop = StopSignal.install()
        answers = [stop.requested_everywhere()]
        if dist.get_rank() == signalled_rank:
            os.kill(os.getpid(), signal.SIGUSR1)
        answers.append(stop.requested_everywhere())
        stop.uninstall()
        return answers
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~30 s on a busy 2-core machine
def test_one_signalled_rank_stops_every_rank():
    assert run_workers(2, _agree, 1, timeout=120) == [[False, True], [False, True]]


def test_mark_finished_writes_the_exported_marker_on_rank_0_only(tmp_path, monkeypatch):
    marker = tmp_path / "stage" / "FINISHED"
    monkeypatch.delenv(FINISHED_ENV, raising=False)
    assert finished_file() is None and mark_finished() is None
    monkeypatch.setenv(FINISHED_ENV, str(marker))
    assert mark_finished(rank=1) == marker and not marker.exists()
    assert mark_finished(rank=0) == marker and marker.read_text() == "finished\n"
    assert not marker.with_name("FINISHED.tmp").exists()
