"""The bubblewrap command line, the identity the sandbox runs as, and the check that bwrap works.

Why bubblewrap: it builds the sandbox from unprivileged kernel features (user, mount, PID, network, IPC
and UTS namespaces), needs no daemon and no image, starts in a few milliseconds, and its PID namespace
gives a clean kill of everything the program started. Docker/gVisor would need a daemon or root; a
seccomp-only approach would not hide the file system or the network.

Identity: RLIMIT_NPROC is never enforced for host uid 0 (the kernel exempts the root user even inside a
user namespace), so when we are root bwrap itself is started as an unprivileged host uid (65534,
`nobody`, by default); inside the sandbox the program sees uid/gid 65534 as well.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

log = logging.getLogger(__name__)

SANDBOX_DIR = "/sandbox"
"""Where the run directory appears inside the sandbox (the program's working directory)."""

SANDBOX_UID = 65534
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

# Top-level system directories: bound read-only, or recreated as the same symlink (merged-/usr systems).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The few /etc entries programs and toolchains read; the rest of /etc (user names, host names,
# resolver, secrets) stays invisible. Glob for the JDK's configuration, which its lib/ links into /etc.
_ETC_ENTRIES = (
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/java-*",
)  # fmt: skip


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create a sandbox here (pass isolation='none' to run anyway)."""


def host_uid_for_sandbox(uid: int = SANDBOX_UID) -> int | None:
    """The host uid to start the sandbox as: `uid` when we are root (see module docstring), else None
    (we already are unprivileged; bwrap maps our uid to the sandbox uid)."""
    return uid if os.geteuid() == 0 else None


def traversable_by_others(directory: str) -> bool:
    """True when a uid with no special rights can enter `directory` (it and every parent are o+x)."""
    path = os.path.realpath(directory)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == os.sep:
            return True
        path = os.path.dirname(path)


def _system_binds() -> list[str]:
    """Read-only binds of the system directories, symlinks recreated as symlinks."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for pattern in _ETC_ENTRIES:
        for path in sorted(glob.glob(pattern)):
            args += ["--ro-bind", path, path]
    return args


def bwrap_argv(
    run_dir: str, command: Sequence[str], *, extra_ro_binds: Sequence[str] = (), tmpfs_mb: int = 64
) -> list[str]:
    """The full bwrap command running `command` in `run_dir` (bound read-write at /sandbox).

    --unshare-all: new user, mount, PID, network (loopback only), IPC, UTS and cgroup namespaces;
    --die-with-parent: the sandbox dies with us; --new-session: no TIOCSTI on our terminal;
    --clearenv: nothing of our environment leaks in (tokens, paths); --remount-ro /: see below."""
    binds = _system_binds()
    for path in extra_ro_binds:
        binds += ["--ro-bind", path, path]
    return [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        *binds,
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
        "--bind", run_dir, SANDBOX_DIR, "--chdir", SANDBOX_DIR,
        # The root is bwrap's own tmpfs, writable by the sandbox user and without a size limit: make it
        # read-only, so that only /sandbox and the size-limited /tmp can be written.
        "--remount-ro", "/",
        "--hostname", "sandbox",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--clearenv",
        "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", SANDBOX_DIR,
        "--setenv", "LANG", "C.UTF-8", "--setenv", "TMPDIR", "/tmp",
        "--",
        *command,
    ]  # fmt: skip


def plain_env(run_dir: str) -> dict[str, str]:
    """Environment of a run without bubblewrap (isolation='none'): the same minimal set."""
    return {"PATH": SANDBOX_PATH, "HOME": run_dir, "LANG": "C.UTF-8", "TMPDIR": run_dir}


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox here, or None when it can. Runs `true` in a full sandbox once
    per process (as the sandbox uid, like real runs), so a broken setup fails before any program."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; run .ci/install_sandbox.sh or apt-get install bubblewrap"
    if shutil.which("prlimit") is None:
        return "prlimit (util-linux) is not installed"
    uid = host_uid_for_sandbox()
    ids = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as probe_dir:
            os.chmod(probe_dir, 0o755)
            argv = bwrap_argv(probe_dir, ["true"])
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/", **ids)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap failed to start: {exc}"
    if proc.returncode != 0:
        message = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        return f"bubblewrap cannot create a sandbox here: {message}"
    return None


def require_bwrap() -> None:
    """Raise SandboxUnavailable (with the reason) unless bubblewrap works."""
    problem = bwrap_problem()
    if problem is not None:
        raise SandboxUnavailable(f"{problem} (pass isolation='none' to run without isolation, unsafe)")


def warn_no_isolation() -> None:
    """The loud warning of the opt-out; logged once per call site use (every Sandbox construction)."""
    log.warning(
        "SANDBOX ISOLATION DISABLED (isolation='none'): untrusted code runs with resource limits only; "
        "it can read your files, use the network and signal your processes."
    )
