"""Sandbox test fixtures: a real bubblewrap sandbox (skipped with the reason when bwrap cannot run here)
and per-language skips when a toolchain is missing (.ci/install_sandbox.sh installs them)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from megatron_qwen.sandbox import Limits, Sandbox, SandboxConfig, toolchain_problem
from megatron_qwen.sandbox.isolation import bwrap_problem

FAST = Limits(timeout_s=10.0, memory_mb=512, max_output_bytes=16 * 1024)


def require_language(language: str) -> None:
    """Skip the calling test when `language`'s compiler/interpreter is not installed."""
    problem = toolchain_problem(language)
    if problem is not None:
        pytest.skip(f"{language} toolchain missing after .ci/install_sandbox.sh: {problem}")


@pytest.fixture(scope="session")
def work_root() -> Iterator[str]:
    """A run-directory parent the sandbox uid can reach (pytest's tmp_path is mode 700)."""
    root = tempfile.mkdtemp(prefix="sandbox-tests-")
    os.chmod(root, 0o711)
    yield root
    leftovers = os.listdir(root)
    os.rmdir(root)  # fails the session teardown if a run directory was not cleaned up
    assert not leftovers


@pytest.fixture(scope="session")
def sandbox(work_root: str) -> Sandbox:
    """The real, isolated sandbox; the isolation tests skip (with bwrap's own reason) where it can't run."""
    problem = bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap unusable, isolation tests skipped: {problem}")
    return Sandbox(SandboxConfig(limits=FAST, work_root=work_root))


@pytest.fixture(scope="session")
def lang_sandbox(work_root: str) -> Sandbox:
    """For the per-language tests (our own, trusted programs): the isolated sandbox where bubblewrap
    works, else the explicit isolation='none' opt-out, so that the toolchains are still tested."""
    isolation = "bwrap" if bwrap_problem() is None else "none"
    return Sandbox(SandboxConfig(isolation=isolation, limits=FAST, work_root=work_root))
