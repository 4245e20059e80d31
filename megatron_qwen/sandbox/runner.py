"""Run one program: a fresh directory, an optional compile step, the run, the cleanup.

Both steps run in the same kind of sandbox (bubblewrap + rlimits) with their own limits: a compiler is
untrusted too once the source is (C++ templates and Java annotation processing can loop or allocate
without bound).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, replace
from typing import Literal

from megatron_qwen.sandbox import isolation as iso
from megatron_qwen.sandbox.languages import Commands, commands, normalize_language
from megatron_qwen.sandbox.limits import DEFAULT_COMPILE_LIMITS, DEFAULT_LIMITS, Limits, prlimit_prefix
from megatron_qwen.sandbox.process import ProcessOutcome, run_bounded
from megatron_qwen.sandbox.result import RunResult, Status, classify

Isolation = Literal["bwrap", "none"]


@dataclass(frozen=True)
class SandboxConfig:
    """How programs are run. `isolation='none'` is the explicit, logged opt-out (rlimits only)."""

    isolation: Isolation = "bwrap"
    limits: Limits = DEFAULT_LIMITS
    compile_limits: Limits = DEFAULT_COMPILE_LIMITS
    work_root: str | None = None
    """Parent of the per-run directories (default: the system temp dir); must be reachable by uid 65534."""
    sandbox_uid: int = iso.SANDBOX_UID
    """Host uid the sandbox runs as when we are root (ignored otherwise)."""


class Sandbox:
    """Runs untrusted programs. Construction checks that the isolation works (SandboxUnavailable
    otherwise), so a broken machine fails once, loudly, instead of silently running code unisolated."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        if self.config.isolation == "bwrap":
            iso.require_bwrap()
        elif self.config.isolation == "none":
            iso.warn_no_isolation()
        else:
            raise ValueError(f"isolation must be 'bwrap' or 'none', not {self.config.isolation!r}")
        self.host_uid = iso.host_uid_for_sandbox(self.config.sandbox_uid)
        self._check_work_root()

    def _check_work_root(self) -> None:
        """Fail now, clearly, if the sandbox uid could not reach its run directories (e.g. a work_root
        under a mode-700 directory such as pytest's tmp_path or /root)."""
        root = self.config.work_root or tempfile.gettempdir()
        if not os.path.isdir(root):
            raise ValueError(f"sandbox work_root {root} is not a directory")
        if self.host_uid is not None and not iso.traversable_by_others(root):
            raise ValueError(
                f"sandbox work_root {root} is not reachable by the sandbox uid {self.host_uid}: every directory "
                "on its path needs o+x (choose another work_root, e.g. under /tmp)"
            )

    def run(self, code: str, language: str, *, limits: Limits | None = None, stdin: str | None = None) -> RunResult:
        """Compile (Java, C++) and run `code`; never raises for anything the program does."""
        language = normalize_language(language)
        limits = limits or self.config.limits
        cmds = commands(language, code, limits, self.config.compile_limits, self.host_uid is not None)
        run_dir = self._make_run_dir()
        try:
            self._write(run_dir, cmds.source_name, code)
            stdin_path = None
            if stdin is not None:
                stdin_path = self._write(run_dir, ".stdin", stdin)
            if cmds.compile is None:
                return self._step(run_dir, cmds.run, cmds, limits, stdin_path)
            compiled = self._step(run_dir, cmds.compile, cmds, self.config.compile_limits, None)
            if compiled.status is not Status.PASSED:
                return _compile_error(compiled)
            ran = self._step(run_dir, cmds.run, cmds, limits, stdin_path)
            # Times of a compiled program include its compile step: that is what a benchmark pays.
            return replace(ran, wall_s=ran.wall_s + compiled.wall_s, cpu_s=ran.cpu_s + compiled.cpu_s)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _make_run_dir(self) -> str:
        """A fresh private directory, owned by the sandbox uid so that the program can write in it."""
        run_dir = tempfile.mkdtemp(prefix="sandbox-", dir=self.config.work_root)
        if self.host_uid is not None:
            os.chown(run_dir, self.host_uid, self.host_uid)
        return run_dir

    @staticmethod
    def _write(run_dir: str, name: str, text: str) -> str:
        """Write one input file (read-only for the program: owned by us, mode 0644)."""
        path = os.path.join(run_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def _step(
        self, run_dir: str, argv: list[str], cmds: Commands, limits: Limits, stdin_path: str | None
    ) -> RunResult:
        """One sandboxed process (compile or run) -> its classified result."""
        cpu_file = f".sandbox-cpu-{secrets.token_hex(8)}"
        command = prlimit_prefix(limits, cmds.headroom_mb) + cpu_wrapper(cpu_file) + argv
        if self.config.isolation == "bwrap":
            full = iso.bwrap_argv(run_dir, command, extra_ro_binds=cmds.ro_binds, tmpfs_mb=limits.tmpfs_mb)
            env = {"PATH": iso.SANDBOX_PATH}
        else:
            full, env = command, iso.plain_env(run_dir)
        outcome = run_bounded(
            full, cwd=run_dir, env=env, timeout_s=limits.timeout_s, max_output_bytes=limits.max_output_bytes,
            user=self.host_uid, stdin_path=stdin_path,
        )  # fmt: skip
        cpu_s = read_cpu_file(os.path.join(run_dir, cpu_file))
        if cpu_s is not None:
            outcome = replace(outcome, cpu_s=cpu_s)
        return self._result(outcome, limits)

    @staticmethod
    def _result(outcome: ProcessOutcome, limits: Limits) -> RunResult:
        """Classify; the shell wrapper (and bubblewrap) report a signal-killed program as exit code 128+N
        (shell convention): undo that, so exit_code is -N like subprocess's."""
        exit_code = outcome.exit_code
        if 128 < exit_code < 128 + 65:
            exit_code = -(exit_code - 128)
        status, detail = classify(
            exit_code, timed_out=outcome.timed_out, timeout_s=limits.timeout_s, stderr=outcome.stderr,
            cpu_s=outcome.cpu_s, cpu_limit_s=limits.cpu_seconds,
        )  # fmt: skip
        return RunResult(
            status=status, exit_code=exit_code, wall_s=outcome.wall_s, cpu_s=outcome.cpu_s,
            stdout=outcome.stdout, stderr=outcome.stderr, truncated=outcome.truncated, detail=detail,
        )  # fmt: skip


def cpu_wrapper(cpu_file: str) -> list[str]:
    """`sh -c` prefix that runs the program, then writes the CPU times of the program and everything it
    reaped (`times`, children line) to `cpu_file`, and exits with the program's status.

    Why: bubblewrap's monitor exits as soon as its PID 1 reports the program's exit code, without reaping
    it, so wait4 on bwrap does not see the program's CPU time. The file has an unguessable name; a
    program could still forge it, which only affects the reported cpu_s."""
    script = f'"$@"; rc=$?; times > {cpu_file}; exit $rc'
    return ["/bin/sh", "-c", script, "sh"]


_TIMES = re.compile(r"(\d+)m([\d.]+)s")


def read_cpu_file(path: str) -> float | None:
    """Children user + system seconds from a `times` output file, or None if absent or malformed."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            values = [int(m) * 60 + float(s) for m, s in _TIMES.findall(f.read(256))]
    except (OSError, ValueError):
        return None
    return values[2] + values[3] if len(values) == 4 else None


def _compile_error(compiled: RunResult) -> RunResult:
    """The result of a failed compile step: compile_error, with the compiler's messages as stderr."""
    detail = "compiler " + (compiled.detail or "failed")
    return RunResult(
        status=Status.COMPILE_ERROR, exit_code=compiled.exit_code, wall_s=compiled.wall_s, cpu_s=compiled.cpu_s,
        stdout=compiled.stdout, stderr=compiled.stderr, truncated=compiled.truncated, detail=detail,
    )  # fmt: skip


def run_program(code: str, language: str, *, config: SandboxConfig | None = None, **kw: object) -> RunResult:
    """One-shot convenience: `Sandbox(config).run(code, language, ...)`."""
    return Sandbox(config).run(code, language, **kw)  # type: ignore[arg-type]
