"""The hang watchdog: a process whose step never completes dumps every thread's stack and exits 3; one
that keeps making progress is left alone; two gloo ranks, one hung inside a step, both end with status 3."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from megatron_qwen.platform.spawn import WorkerError, run_workers

SCRIPT = textwrap.dedent("""
    import sys, time
    from megatron_qwen.training.watchdog import Watchdog

    def stuck_in_a_collective():
        time.sleep(60)

    dog = Watchdog(float(sys.argv[1]))
    if sys.argv[2] == "hang":
        stuck_in_a_collective()
    for _ in range(int(float(sys.argv[1]) * 10)):   # beats for twice the limit, then stops cleanly
        time.sleep(0.2)
        dog.beat()
    dog.stop()
    print("done")
""")


def run(timeout_s: float, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(timeout_s), mode], capture_output=True, text=True,
                          timeout=60)


def test_a_hang_dumps_every_stack_and_exits_3():
    start = time.monotonic()
    proc = run(1.0, "hang")
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - start < 15
    assert "watchdog: no training step completed for" in proc.stderr
    assert "stuck_in_a_collective" in proc.stderr  # the hung thread's frame is in the dump


def test_progress_keeps_the_watchdog_quiet():
    proc = run(1.0, "beat")
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


def _hang_rank_one(root: str) -> None:
    import torch.distributed as dist

    from megatron_qwen.config import Config
    from megatron_qwen.training.trainer import Trainer

    cfg = Config()
    cfg.data.mock, cfg.data.seq_length = True, 16
    cfg.train.train_iters, cfg.train.watchdog_seconds = 20, 4.0
    cfg.optim.warmup_steps = 0
    trainer = Trainer(cfg, {}, "{}\n")
    honest, calls = trainer.objective.forward_step, {"n": 0}

    def forward_step(data_iterator, model):  # rank 1 sleeps forever in its 9th micro-batch (step 3)
        calls["n"] += 1
        if dist.get_rank() == 1 and calls["n"] == 9:
            time.sleep(3600)
        return honest(data_iterator, model)
    trainer.objective.forward_step = forward_step
    trainer.train()


@pytest.mark.slow
def test_a_rank_hung_inside_a_step_ends_both_ranks_with_status_3(tmp_path, capfd):
    with pytest.raises(WorkerError, match="exited with code 3"):
        run_workers(2, _hang_rank_one, str(tmp_path), timeout=240)
    assert "watchdog: no training step completed" in capfd.readouterr().err
