"""End to end on CPU: data workers leave the tiny model's losses bit-identical, and `profile.steps` writes a
torch profiler trace that names the step's phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _train_helpers import metrics, tiny, train

STEPS = ["train.train_iters=4", "checkpoint.save_interval=0"]


@pytest.mark.slow
def test_workers_keep_losses_bit_identical_and_the_profiler_names_the_phases(tmp_path: Path):
    train(1, tiny(tmp_path / "inline", *STEPS, "data.num_workers=0"), tmp_path)
    train(1, tiny(tmp_path / "workers", *STEPS, "data.num_workers=2", "profile.steps=[2,3]",
                  f"profile.dir={tmp_path / 'prof'}"), tmp_path)
    inline, workers = metrics(tmp_path / "inline" / "metrics.jsonl"), metrics(tmp_path / "workers" / "metrics.jsonl")
    assert sorted(inline) == sorted(workers) == [1, 2, 3, 4]
    for step in inline:  # exact equality: the same samples in the same order give the same float bits
        assert inline[step]["loss"] == workers[step]["loss"] and inline[step]["grad_norm"] == workers[step]["grad_norm"]

    trace = tmp_path / "prof" / "trace_rank0_steps2-3.json"
    events = json.loads(trace.read_text())["traceEvents"]
    names = [e.get("name", "") for e in events]
    for phase in ("data", "forward_backward", "optimizer"):
        assert names.count(phase) == 2, (phase, names.count(phase))  # once per profiled step
    assert any(n.startswith("autograd::engine::evaluate_function") for n in names)  # the backward pass
    assert any("aten::mm" in n or "aten::addmm" in n for n in names)  # the forward's matmuls
