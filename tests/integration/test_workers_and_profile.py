"""End to end on CPU: data workers leave the tiny model's losses bit-identical (from the start and after a
resume), and `profile.steps` writes a torch profiler trace that names the step's phases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _train_helpers import metrics, tiny, train

STEPS = ["train.train_iters=4", "checkpoint.save_interval=2", "checkpoint.keep_last=0"]


@pytest.fixture(scope="module")
def inline(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """(checkpoint dir, per-step metrics) of a run whose training thread builds every micro-batch."""
    root = tmp_path_factory.mktemp("inline")
    train(1, tiny(root / "ck", *STEPS, "data.num_workers=0"), root)
    return root / "ck", metrics(root / "ck" / "metrics.jsonl")


def same_steps(a: dict[int, dict], b: dict[int, dict], steps) -> None:
    for step in steps:  # exact equality: the same samples in the same order give the same float bits
        assert a[step]["loss"] == b[step]["loss"] and a[step]["grad_norm"] == b[step]["grad_norm"], step


@pytest.mark.slow
def test_workers_keep_losses_bit_identical_and_the_profiler_names_the_phases(tmp_path: Path, inline):
    _, reference = inline
    train(1, tiny(tmp_path / "workers", *STEPS, "data.num_workers=2", "profile.steps=[2,3]",
                  f"profile.dir={tmp_path / 'prof'}"), tmp_path)
    workers = metrics(tmp_path / "workers" / "metrics.jsonl")
    assert sorted(reference) == sorted(workers) == [1, 2, 3, 4]
    same_steps(reference, workers, range(1, 5))

    trace = tmp_path / "prof" / "trace_rank0_steps2-3.json"
    names = [e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]]
    for phase in ("data", "forward_backward", "optimizer"):
        assert names.count(phase) == 2, (phase, names.count(phase))  # once per profiled step
    assert any(n.startswith("autograd::engine::evaluate_function") for n in names)  # the backward pass
    assert any("aten::mm" in n or "aten::addmm" in n for n in names)  # the forward's matmuls


@pytest.mark.slow
def test_a_run_resumed_with_workers_continues_exactly(tmp_path: Path, inline):
    ck, reference = inline
    resumed = tmp_path / "ck"
    shutil.copytree(ck, resumed)
    shutil.rmtree(resumed / "iter_0000004")
    (resumed / "latest").write_text("iter_0000002\n")
    out = train(1, tiny(resumed, *STEPS, "data.num_workers=2"), tmp_path)
    assert f"resuming from {resumed / 'iter_0000002'}" in out
    same_steps(reference, metrics(resumed / "metrics.jsonl"), (3, 4))
