"""The outcome of one sandboxed run, and the rules that turn a raw exit into a status.

Statuses: passed (exit code 0), failed (any other exit code), timeout (wall clock or CPU limit),
crashed (killed by a signal, or out of memory), compile_error (the compile step did not succeed).
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass
from enum import StrEnum


class Status(StrEnum):
    """What happened to a run; StrEnum so that it serializes to JSON as a plain string."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    COMPILE_ERROR = "compile_error"


@dataclass(frozen=True)
class RunResult:
    """One run. `exit_code` is the process's exit code, or -N when it was killed by signal N (the
    subprocess convention). `stdout`/`stderr` are decoded UTF-8 (invalid bytes replaced), cut to the
    configured size keeping their head and tail; `truncated` says that either was cut."""

    status: Status
    exit_code: int | None
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    truncated: bool
    detail: str = ""
    """A short human explanation: 'killed by SIGSEGV', 'out of memory', 'wall-clock timeout after 3 s'."""

    @property
    def passed(self) -> bool:
        """True when the program exited with code 0."""
        return self.status is Status.PASSED

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (status as its string, floats rounded to the microsecond)."""
        out = asdict(self)
        out["status"] = str(self.status)
        out["wall_s"] = round(self.wall_s, 6)
        out["cpu_s"] = round(self.cpu_s, 6)
        return out


# Messages runtimes print when an allocation fails under RLIMIT_DATA/RLIMIT_AS. Python and Java exit
# with code 1 after them, which would otherwise read as an ordinary test failure.
OOM_MARKERS = (
    "MemoryError",
    "java.lang.OutOfMemoryError",
    "JavaScript heap out of memory",
    "std::bad_alloc",
    "Cannot allocate memory",
    "Could not reserve enough space",
)


def signal_name(signum: int) -> str:
    """'SIGKILL' for 9; 'signal 99' for numbers Python does not know."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify(
    exit_code: int, *, timed_out: bool, timeout_s: float, stderr: str, cpu_s: float, cpu_limit_s: int
) -> tuple[Status, str]:
    """Status and detail of a finished run. `exit_code` follows the subprocess convention (-N for a
    signal). A SIGKILL after the CPU hard limit, and SIGXCPU, are CPU timeouts, not crashes."""
    if timed_out:
        return Status.TIMEOUT, f"wall-clock timeout after {timeout_s:g} s"
    if exit_code < 0:
        signum = -exit_code
        if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_s >= cpu_limit_s):
            return Status.TIMEOUT, f"CPU time limit of {cpu_limit_s} s"
        if any(marker in stderr for marker in OOM_MARKERS):
            return Status.CRASHED, f"out of memory (killed by {signal_name(signum)})"
        return Status.CRASHED, f"killed by {signal_name(signum)}"
    if exit_code == 0:
        return Status.PASSED, ""
    if any(marker in stderr for marker in OOM_MARKERS):
        return Status.CRASHED, f"out of memory (exit code {exit_code})"
    return Status.FAILED, f"exit code {exit_code}"
