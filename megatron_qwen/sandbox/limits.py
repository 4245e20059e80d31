"""Resource limits of one sandboxed process, and their translation into a `prlimit` command prefix.

Why `prlimit` inside the sandbox rather than `preexec_fn`: the pool runs sandboxes from threads, and
`preexec_fn` is not safe with threads; `prlimit` is a tiny util-linux binary that sets the limits on
itself and then execs the program, so the limits apply to exactly the sandboxed process tree and not to
bubblewrap (whose user-namespace setup must not be counted against RLIMIT_NPROC).

Memory: RLIMIT_DATA caps the private writable memory (heap, malloc, anonymous mappings, thread stacks)
and is the real memory budget (`memory_mb`). RLIMIT_AS caps the address space, which runtimes that
reserve large PROT_NONE regions up front (the JVM's compressed class space and code cache, V8's heap
cage) need far more of than they ever use, so it is set to `memory_mb + language headroom`: a second
wall that still stops runaway mappings, without breaking the JVM or Node at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Limits of one run (the program, or the compiler when compiling). All defaults are documented in
    docs/sandbox.md; they fit benchmark programs (HumanEval, MultiPL-E), not long computations."""

    timeout_s: float = 10.0
    """Wall clock; the whole sandbox (its PID namespace) is killed when it runs out."""
    cpu_s: float | None = None
    """CPU seconds per process (RLIMIT_CPU); None -> ceil(timeout_s). Catches busy loops early."""
    memory_mb: int = 1024
    """RLIMIT_DATA: private writable memory per process; also sets -Xmx / --max-old-space-size."""
    nproc: int = 64
    """RLIMIT_NPROC: processes + threads of the sandbox user (the JVM alone starts ~15 threads)."""
    fsize_mb: int = 64
    """RLIMIT_FSIZE: largest file the program may write."""
    nofile: int = 256
    """RLIMIT_NOFILE: open file descriptors."""
    max_output_bytes: int = 64 * 1024
    """Per stream (stdout, stderr): what is kept; the rest is read and dropped (head and tail kept)."""
    tmpfs_mb: int = 64
    """Size of the private tmpfs mounted on /tmp inside the sandbox."""

    def __post_init__(self) -> None:
        positive = {
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "nproc": self.nproc,
            "fsize_mb": self.fsize_mb,
            "nofile": self.nofile,
            "max_output_bytes": self.max_output_bytes,
            "tmpfs_mb": self.tmpfs_mb,
        }
        if self.cpu_s is not None:
            positive["cpu_s"] = self.cpu_s
        bad = [f"{name}={value}" for name, value in positive.items() if not value > 0]
        if bad:
            raise ValueError(f"sandbox limits must be positive: {', '.join(bad)}")

    @property
    def cpu_seconds(self) -> int:
        """Whole CPU seconds for RLIMIT_CPU (the kernel counts in seconds)."""
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s))

    def with_(self, **changes: object) -> Limits:
        """A copy with some fields changed (dataclasses.replace, re-validated)."""
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()
"""Limits of a program run."""

DEFAULT_COMPILE_LIMITS = Limits(timeout_s=60.0, memory_mb=2048, nproc=64, fsize_mb=256)
"""Limits of a compile step (javac, g++): compilers need more memory and time than the tests."""


def prlimit_prefix(limits: Limits, address_space_headroom_mb: int) -> list[str]:
    """`prlimit ... --` setting every limit soft = hard, except CPU: soft = limit (SIGXCPU, which we
    report as a timeout), hard = limit + 1 (SIGKILL if the program ignores SIGXCPU)."""
    cpu = limits.cpu_seconds
    data = limits.memory_mb * MiB
    address_space = (limits.memory_mb + address_space_headroom_mb) * MiB
    return [
        "prlimit",
        f"--cpu={cpu}:{cpu + 1}",
        f"--data={data}:{data}",
        f"--as={address_space}:{address_space}",
        f"--nproc={limits.nproc}:{limits.nproc}",
        f"--fsize={limits.fsize_mb * MiB}:{limits.fsize_mb * MiB}",
        f"--nofile={limits.nofile}:{limits.nofile}",
        "--core=0:0",
        "--",
    ]
