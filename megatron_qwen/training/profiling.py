"""Profiling: a torch profiler trace of steps `profile.steps=[first, last]` on `profile.ranks`, named phases.

`phase(name)` marks a part of the step (`forward_backward`, `optimizer`, `data`) as a profiler range, and on a
GPU also as an NVTX range for Nsight Systems. `StepProfiler` records the chosen steps on the chosen ranks
(CPU activity, plus CUDA kernels on a GPU) and writes `{profile.dir}/trace_rank{R}_steps{first}-{last}.json`, a
Chrome trace (open it in Perfetto or chrome://tracing). On a GPU it also brackets the steps with
`torch.cuda.profiler.start()/stop()`, so `nsys profile --capture-range=cudaProfilerApi` captures only them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_qwen.config import Config
from megatron_qwen.platform import on_gpu

log = logging.getLogger("megatron_qwen.profile")


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A named range in the profiler trace (and an NVTX range on a GPU)."""
    nvtx = on_gpu()
    with torch.profiler.record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()


def trace_path(cfg: Config, rank: int) -> Path:
    p = cfg.profile
    root = Path(p.dir) if p.dir else Path(cfg.checkpoint.dir or ".") / "profile"
    return root / f"trace_rank{rank}_steps{p.steps[0]}-{p.steps[1]}.json"


class StepProfiler:
    """Call `before(step)` and `after(step)` around each step (1-based numbers, as logged) and `close()` at the end."""

    def __init__(self, cfg: Config, rank: int):
        p = cfg.profile
        self.enabled = bool(p.steps) and rank in p.ranks
        self.first, self.last = (p.steps[0], p.steps[1]) if p.steps else (0, -1)
        self.path = trace_path(cfg, rank) if self.enabled else None
        self.record_shapes, self.with_stack = p.record_shapes, p.with_stack
        self._profiler: torch.profiler.profile | None = None
        self._done = False

    def before(self, step: int) -> None:
        if not self.enabled or self._done or self._profiler is not None or not self.first <= step <= self.last:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if on_gpu():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.profiler.start()
        self._profiler = torch.profiler.profile(activities=activities, record_shapes=self.record_shapes,
                                                with_stack=self.with_stack)
        self._profiler.__enter__()

    def after(self, step: int) -> None:
        if self._profiler is not None and step >= self.last:
            self.close()

    def close(self) -> None:
        """Stop and write the trace (also when the run stops inside the range)."""
        if self._profiler is None:
            return
        if on_gpu():
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
        self._profiler.__exit__(None, None, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._profiler.export_chrome_trace(str(self.path))
        log.info("profiler trace of steps %d-%d written to %s", self.first, self.last, self.path)
        self._profiler, self._done = None, True
