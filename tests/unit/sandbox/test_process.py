"""The pieces under the sandbox, without bubblewrap: bounded output capture, the deadline kill, the
status rules, the limits, and the CPU-time file."""

from __future__ import annotations

import signal
import sys

import pytest

from megatron_qwen.sandbox.limits import Limits, prlimit_prefix
from megatron_qwen.sandbox.process import HeadTailBuffer, run_bounded
from megatron_qwen.sandbox.result import Status, classify
from megatron_qwen.sandbox.runner import read_cpu_file

ENV = {"PATH": "/usr/bin:/bin"}


def test_head_tail_buffer_keeps_both_ends_and_counts() -> None:
    buf = HeadTailBuffer(100)  # 75 head + 25 tail
    for i in range(1000):
        buf.add(f"{i:04d}\n".encode())
    text = buf.text()
    assert buf.truncated and buf.total == 5000
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert "[... 4900 bytes of output dropped ...]" in text


def test_head_tail_buffer_small_output_untouched() -> None:
    buf = HeadTailBuffer(100)
    buf.add(b"a" * 60)
    buf.add(b"b" * 40)
    assert not buf.truncated
    assert buf.text() == "a" * 60 + "b" * 40


def test_run_bounded_captures_exit_code_and_streams(tmp_path) -> None:
    out = run_bounded(
        ["sh", "-c", "echo out; echo err >&2; exit 7"], cwd=str(tmp_path), env=ENV, timeout_s=10, max_output_bytes=1024
    )
    assert (out.exit_code, out.stdout, out.stderr, out.timed_out) == (7, "out\n", "err\n", False)


def test_run_bounded_kills_on_deadline_with_children(tmp_path) -> None:
    out = run_bounded(["sh", "-c", "sleep 60 & sleep 60; wait"], cwd=str(tmp_path), env=ENV, timeout_s=0.5,
                      max_output_bytes=1024)  # fmt: skip
    assert out.timed_out and out.exit_code == -signal.SIGKILL
    assert out.wall_s < 3


def test_run_bounded_drains_endless_output_in_bounded_memory(tmp_path) -> None:
    out = run_bounded(["yes"], cwd=str(tmp_path), env=ENV, timeout_s=0.5, max_output_bytes=4096)
    assert out.timed_out and out.truncated
    assert len(out.stdout) < 4096 + 100


def test_run_bounded_cpu_time_of_child(tmp_path) -> None:
    out = run_bounded([sys.executable, "-c", "sum(range(10**7))"], cwd=str(tmp_path), env=ENV, timeout_s=30,
                      max_output_bytes=1024)  # fmt: skip
    assert out.exit_code == 0 and out.cpu_s > 0.05


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "stderr", "cpu", "status", "detail"),
    [
        (0, False, "", 0.1, Status.PASSED, ""),
        (1, False, "AssertionError", 0.1, Status.FAILED, "exit code 1"),
        (-9, True, "", 0.1, Status.TIMEOUT, "wall-clock timeout after 2 s"),
        (-signal.SIGXCPU, False, "", 2.0, Status.TIMEOUT, "CPU time limit of 2 s"),
        (-9, False, "", 3.0, Status.TIMEOUT, "CPU time limit of 2 s"),  # the hard CPU limit's SIGKILL
        (-11, False, "", 0.1, Status.CRASHED, "killed by SIGSEGV"),
        (-9, False, "", 0.1, Status.CRASHED, "killed by SIGKILL"),
        (1, False, "Traceback ...\nMemoryError\n", 0.1, Status.CRASHED, "out of memory (exit code 1)"),
        (-6, False, "terminate called after throwing an instance of 'std::bad_alloc'", 0.1, Status.CRASHED,
         "out of memory (killed by SIGABRT)"),
    ],
)
def test_classify(exit_code, timed_out, stderr, cpu, status, detail) -> None:
    assert classify(exit_code, timed_out=timed_out, timeout_s=2, stderr=stderr, cpu_s=cpu, cpu_limit_s=2) == (
        status,
        detail,
    )


def test_limits_validation_and_prlimit() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        Limits(timeout_s=0)
    limits = Limits(timeout_s=2.5, memory_mb=100, nproc=8, fsize_mb=1, nofile=32)
    args = prlimit_prefix(limits, address_space_headroom_mb=50)
    assert args[0] == "prlimit" and args[-1] == "--"
    assert "--cpu=3:4" in args and f"--data={100 << 20}:{100 << 20}" in args and f"--as={150 << 20}:{150 << 20}" in args
    assert "--nproc=8:8" in args and f"--fsize={1 << 20}:{1 << 20}" in args and "--nofile=32:32" in args


def test_read_cpu_file(tmp_path) -> None:
    path = tmp_path / "cpu"
    path.write_text("0m0.010000s 0m0.020000s\n1m2.500000s 0m0.250000s\n")
    assert read_cpu_file(str(path)) == pytest.approx(62.75)
    path.write_text("garbage")
    assert read_cpu_file(str(path)) is None
    assert read_cpu_file(str(tmp_path / "missing")) is None
