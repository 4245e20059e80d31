"""Run one command with a wall-clock deadline and bounded output capture.

Why not `subprocess.run(capture_output=True, timeout=...)`: it buffers all output in memory (a program
printing forever would exhaust ours), it kills only the direct child, and it cannot give the CPU time of
one child from a thread (RUSAGE_CHILDREN is process-wide). Here both pipes and a pidfd of the child sit
in one selector; output beyond the cap is read and dropped (so a chatty program is not blocked on a full
pipe and still finishes on time); the child is reaped with wait4, whose rusage covers the descendants it
reaped (bubblewrap's PID 1 reaps everything in the sandbox); on timeout the child's process group gets
SIGKILL, and with bubblewrap the death of its PID 1 takes the whole PID namespace with it.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

_CHUNK = 64 * 1024
_DRAIN_AFTER_EXIT_S = 0.5


class HeadTailBuffer:
    """Keeps the first `head` and last `tail` bytes of a stream and counts the rest: memory stays
    bounded whatever the program prints, and a traceback at the end of a long output survives."""

    def __init__(self, cap: int) -> None:
        self.tail_cap = min(4096, cap // 4)
        self.head_cap = cap - self.tail_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        """Append one chunk."""
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data
            del self.tail[: max(0, len(self.tail) - self.tail_cap)]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        """Decoded output; a marker line says how many bytes were dropped in the middle."""
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
        dropped = self.total - len(self.head) - len(self.tail)
        marker = f"\n[... {dropped} bytes of output dropped ...]\n"
        return bytes(self.head).decode("utf-8", "replace") + marker + bytes(self.tail).decode("utf-8", "replace")


@dataclass(frozen=True)
class ProcessOutcome:
    """Raw outcome: exit code (-N for signal N), whether we killed it on the deadline, times, output."""

    exit_code: int
    timed_out: bool
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    truncated: bool


def _decode_status(status: int) -> int:
    """wait status -> exit code, or -signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (it leads its own session: start_new_session=True)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_bounded(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout_s: float,
    max_output_bytes: int,
    user: int | None = None,
    stdin_path: str | None = None,
) -> ProcessOutcome:
    """Run `argv` to completion or to the deadline. `user`: host uid (and gid) to run as, when root."""
    out, err = HeadTailBuffer(max_output_bytes), HeadTailBuffer(max_output_bytes)
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    start = time.monotonic()
    with open(stdin_path or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
            start_new_session=True, close_fds=True, **ids,
        )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        sel.register(pidfd, selectors.EVENT_READ, None)
        timed_out = _pump(sel, pidfd, start + timeout_s)
        # Always, before reaping (the zombie keeps the group id from being reused): on a timeout this is
        # the kill; otherwise it ends descendants that escaped into the background (isolation="none").
        _kill_group(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        _pump_pipes_until(sel, pidfd, time.monotonic() + _DRAIN_AFTER_EXIT_S)
    finally:
        sel.close()
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    wall = time.monotonic() - start
    proc.returncode = _decode_status(status)  # we reaped it ourselves; keep Popen consistent
    return ProcessOutcome(
        exit_code=proc.returncode, timed_out=timed_out, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
        stdout=out.text(), stderr=err.text(), truncated=out.truncated or err.truncated,
    )  # fmt: skip


def _read_ready(key: selectors.SelectorKey, sel: selectors.BaseSelector) -> None:
    """Read one chunk from a ready pipe into its buffer; unregister it at EOF."""
    data = os.read(key.fd, _CHUNK)
    if data:
        key.data.add(data)
    else:
        sel.unregister(key.fileobj)


def _pump(sel: selectors.BaseSelector, pidfd: int, deadline: float) -> bool:
    """Read output until the child has exited and both pipes are at EOF; True if the deadline came
    first. Once the child exits, pipes held open by escaped descendants get a short grace period."""
    exited_at: float | None = None
    while True:
        now = time.monotonic()
        if exited_at is None and now >= deadline:
            return True
        pipes_open = len(sel.get_map()) - (0 if exited_at is not None else 1)
        if exited_at is not None and (pipes_open == 0 or now >= exited_at + _DRAIN_AFTER_EXIT_S):
            return False
        limit = deadline if exited_at is None else exited_at + _DRAIN_AFTER_EXIT_S
        for key, _ in sel.select(max(0.0, limit - now)):
            if key.fd == pidfd:
                sel.unregister(pidfd)
                exited_at = time.monotonic()
            else:
                _read_ready(key, sel)


def _pump_pipes_until(sel: selectors.BaseSelector, pidfd: int, deadline: float) -> None:
    """After the child is reaped: read what is left in the pipes, bounded in time."""
    if pidfd in sel.get_map():
        sel.unregister(pidfd)
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            return
        for key, _ in sel.select(deadline - now):
            _read_ready(key, sel)
