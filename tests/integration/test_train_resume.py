"""Resume through the real entry point: SIGKILL mid-run, an interrupted save, SIGTERM, and a new layout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from _train_helpers import all_output, metrics, start, tiny, train, wait

from megatron_qwen.training.preemption import FINISHED_ENV

STEPS = ["train.train_iters=6", "checkpoint.save_interval=2", "checkpoint.keep_last=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """An uninterrupted single-process run of 6 steps."""
    root = tmp_path_factory.mktemp("reference")
    train(1, tiny(root / "ck", *STEPS), root)
    return metrics(root / "ck" / "metrics.jsonl")


def _wait_for_step(path: Path, step: int, procs, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()):
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank exited before step {step}\n{all_output(procs)}")
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses_and_skips_interrupted_save(tmp_path: Path, reference):
    ck = tmp_path / "ck"
    wandb = ["logging=wandb", f"logging.wandb_dir={tmp_path / 'wb'}"]
    procs = start(1, tiny(ck, *STEPS, *wandb), tmp_path)
    _wait_for_step(ck / "metrics.jsonl", 3, procs)  # iter_0000002 is complete
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    latest = (ck / "latest").read_text().strip()
    # A save that died half-way: the partial dir and a complete-looking dir newer than `latest`.
    (ck / "iter_0000008.partial").mkdir()
    (ck / "iter_0000008.partial" / "__0_0.distcp").write_bytes(b"truncated")
    (ck / "iter_0000009").mkdir()
    out = train(1, tiny(ck, *STEPS, *wandb), tmp_path)
    assert f"resuming from {ck / latest}" in out
    assert "ignoring checkpoint" in out and "iter_0000009" in out
    resumed = metrics(ck / "metrics.jsonl")
    for step in range(1, 7):
        assert resumed[step]["loss"] == reference[step]["loss"], (step, resumed[step], reference[step])
        assert resumed[step]["lr"] == reference[step]["lr"]
    # The resumed run continues the same W&B run (same id, a second offline segment).
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1, runs
    kept = sorted(p.name for p in ck.glob("iter_*") if not p.name.endswith(".partial") and p.name != "iter_0000009")
    assert kept == ["iter_0000004", "iter_0000006"]  # keep_last=2


@pytest.mark.slow
def test_sigterm_saves_at_tp2_and_resumes_at_pp2(tmp_path: Path, reference):
    ck, finished = tmp_path / "ck", tmp_path / "FINISHED"
    procs = start(2, tiny(ck, *STEPS, "parallel=tp2"), tmp_path, {FINISHED_ENV: str(finished)})
    _wait_for_step(ck / "metrics.jsonl", 1, procs)
    os.kill(procs[1].pid, signal.SIGTERM)  # one rank is enough: all ranks agree at the step boundary
    wait(procs)
    assert "stop signal received" in all_output(procs)
    stopped_at = int((ck / "latest").read_text().strip().removeprefix("iter_"))
    assert 1 <= stopped_at < 6 and not finished.exists()
    procs = start(2, tiny(ck, *STEPS, "parallel=pp2"), tmp_path, {FINISHED_ENV: str(finished)})
    wait(procs)
    out = all_output(procs)
    assert "RNG states not restored" in out  # a new layout keeps weights/optimizer, not per-rank RNG
    assert finished.is_file()
    resumed = metrics(ck / "metrics.jsonl")
    for step in range(1, 7):
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5, abs=1e-5), step


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, reference):
    """64 bytes flipped in the middle of the newest shard: reported, the previous checkpoint is used, and the
    resumed steps equal the uninterrupted run's."""
    from megatron_qwen.training.checkpoint import find_latest

    ck = tmp_path / "ck"
    train(1, tiny(ck, *STEPS), tmp_path)
    shard = ck / "iter_0000006" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    shard.write_bytes(bytes(data))
    out = train(1, tiny(ck, *STEPS), tmp_path)
    assert "iter_0000006 is damaged and will not be loaded: __0_0.distcp: CRC-32" in out
    assert f"resuming from {ck / 'iter_0000004'}" in out
    resumed = metrics(ck / "metrics.jsonl")
    for step in (5, 6):
        assert resumed[step]["loss"] == reference[step]["loss"], (step, resumed[step], reference[step])
    assert find_latest(ck) == ck / "iter_0000006"  # saved again, intact


# Fault injection on two gloo ranks (DP=2), through the real entry point with a fault planted by faults.py. The
# surviving rank must not wait forever: it fails in the collective, or the hang watchdog ends it.
TWO_RANKS = [*STEPS, "train.watchdog_seconds=60"]


def _ended(procs, timeout: float = 150) -> list[int]:
    """Exit statuses once every rank has ended on its own (a fault, not a hang)."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 1))
        except Exception:
            _kill_all(procs)
            raise AssertionError(f"a rank did not end after the fault\n{all_output(procs)}") from None
    return [p.returncode for p in procs]


def _kill_all(procs) -> None:
    """SIGKILL every rank and its children (the forked checkpoint writers), as a node failure would."""
    import psutil

    for p in procs:
        try:
            victims = psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]
        except psutil.NoSuchProcess:
            continue
        for v in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                v.kill()
    for p in procs:
        p.wait()


def _resume_matches_reference(ck: Path, tmp_path: Path, reference, resumed_from: str, *extra: str) -> None:
    out = train(2, tiny(ck, *TWO_RANKS, *extra), tmp_path)
    assert f"resuming from {ck / resumed_from}" in out, out
    resumed = metrics(ck / "metrics.jsonl")
    for step in range(1, 7):  # DP=2 against one process: equal up to the order of the gradient sum
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5, abs=1e-5), step
    from megatron_qwen.training.checkpoint import find_latest

    assert find_latest(ck) == ck / "iter_0000006"  # intact by its manifest


@pytest.mark.slow
def test_sigkill_of_one_rank_mid_step(tmp_path: Path, reference):
    ck = tmp_path / "ck"
    procs = start(2, tiny(ck, *TWO_RANKS), tmp_path, {"FAULT": "kill_at_step:3", "FAULT_RANK": "1"})
    codes = _ended(procs)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, all_output(procs))
    assert (ck / "latest").read_text().strip() == "iter_0000002"
    _resume_matches_reference(ck, tmp_path, reference, "iter_0000002")


@pytest.mark.slow
def test_sigkill_of_one_rank_mid_save(tmp_path: Path, reference):
    """Rank 1 dies in the second save after writing its shards: the save never completes, `latest` stays."""
    ck = tmp_path / "ck"
    procs = start(2, tiny(ck, *TWO_RANKS), tmp_path, {"FAULT": "kill_after_write:2", "FAULT_RANK": "1"})
    codes = _ended(procs)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, all_output(procs))
    assert (ck / "latest").read_text().strip() == "iter_0000002"
    assert (ck / "iter_0000004.partial").is_dir() and not (ck / "iter_0000004").exists()
    _resume_matches_reference(ck, tmp_path, reference, "iter_0000002")


@pytest.mark.slow
def test_sigkill_during_an_asynchronous_save(tmp_path: Path, reference):
    """The second background save is killed while its writers run (all ranks and writers, as a node loss):
    `latest` stays on the first, which resumes; the resumed run saves asynchronously to the end."""
    ck, mark = tmp_path / "ck", tmp_path / "writing"
    procs = start(2, tiny(ck, *TWO_RANKS, "checkpoint.async_save=true"), tmp_path,
                  {"FAULT": "slow_write:2:120", "FAULT_MARK": str(mark)})
    deadline = time.time() + 150
    while not mark.exists():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            _kill_all(procs)
            raise AssertionError(f"the second asynchronous save did not start\n{all_output(procs)}")
        time.sleep(0.2)
    _wait_for_step(ck / "metrics.jsonl", 6, procs)  # training went on while the save was being written
    _kill_all(procs)
    assert (ck / "latest").read_text().strip() == "iter_0000002"
    assert (ck / "iter_0000004.partial").is_dir() and not (ck / "iter_0000004").exists()
    _resume_matches_reference(ck, tmp_path, reference, "iter_0000002", "checkpoint.async_save=true")
