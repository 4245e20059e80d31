"""Hostile programs are contained, reported with the right status, and leave the host unharmed:
no network, no writes outside the run directory, a fork bomb ends (and the process limit really
applies, also when the tests run as root), a 10 GB allocation fails at once, endless output is cut and
ends on time, and a sleeping program is killed with everything it started."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import textwrap
import time

import psutil
import pytest

from megatron_qwen.sandbox import Limits, Sandbox, Status

from .conftest import FAST


def sandbox_children() -> list[psutil.Process]:
    """Descendants of this test process that belong to a sandbox: bwrap itself or anything running as the
    sandbox's user (other descendants, e.g. a test runner's helpers, are not ours to judge)."""
    from megatron_qwen.sandbox.isolation import SANDBOX_UID

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "bwrap" or child.uids().real == SANDBOX_UID:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains `marker` (zombies and vanished ones ignored)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_no_network(sandbox: Sandbox) -> None:
    """A listener on the host's loopback is unreachable, name resolution and outside addresses fail."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.3)
        port = server.getsockname()[1]
        code = textwrap.dedent(f"""
            import socket
            reached = []
            for address in [("127.0.0.1", {port}), ("8.8.8.8", 53), ("1.1.1.1", 443)]:
                try:
                    socket.create_connection(address, timeout=2).close()
                    reached.append(address)
                except OSError as exc:
                    print("blocked", address, type(exc).__name__)
            try:
                socket.getaddrinfo("pypi.org", 443)
                reached.append("dns")
            except OSError as exc:
                print("dns blocked", type(exc).__name__)
            print("reached", reached)
            raise SystemExit(1 if reached else 0)
        """)
        result = sandbox.run(code, "python")
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status is Status.PASSED, result
    assert "reached []" in result.stdout


def test_writes_stay_inside(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Writes to /etc, /usr, the repository, the host's /tmp and a host temp dir do not reach the host;
    the host's private directories are not even visible."""
    name = f"sandbox-escape-{secrets.token_hex(6)}"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    host_dir = str(tmp_path_factory.mktemp("host"))
    targets = [f"/etc/{name}", f"/usr/{name}", f"{repo}/{name}", f"/tmp/{name}", f"{host_dir}/{name}", f"/{name}"]
    code = textwrap.dedent(f"""
        import os
        print("visible", [p for p in ["/root", "/work", "/home", {repo!r}, {host_dir!r}] if os.path.exists(p)])
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("escaped")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, type(exc).__name__)
    """)
    result = sandbox.run(code, "python")
    assert result.status is Status.PASSED, result
    for path in targets:
        assert not os.path.exists(path), f"the sandbox wrote {path} on the host"
    assert "visible []" in result.stdout
    # /tmp inside is a private tmpfs: the write succeeds there and vanishes with the sandbox.
    assert f"wrote /tmp/{name}" in result.stdout
    for path in targets:
        if not path.startswith("/tmp/"):
            assert f"refused {path}" in result.stdout


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    """An endless fork loop ends at the timeout, takes all its processes with it, and the host can
    still start processes afterwards."""
    marker = f"bomb{secrets.token_hex(4)}"
    code = textwrap.dedent(f"""
        import os
        # {marker}
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    start = time.monotonic()
    result = sandbox.run(code, "python", limits=FAST.with_(timeout_s=2.0, nproc=32))
    assert time.monotonic() - start < 8
    assert result.status is Status.TIMEOUT, result
    assert subprocess.run(["true"], timeout=10).returncode == 0
    time.sleep(0.2)
    assert sandbox_children() == []


def test_process_limit_is_enforced(sandbox: Sandbox) -> None:
    """RLIMIT_NPROC really bounds the processes (the kernel exempts host root: the sandbox must not run
    as uid 0 on the host). The program counts how many children it could start."""
    code = textwrap.dedent("""
        import os, time
        started = 0
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            started += 1
        print(started)
    """)
    result = sandbox.run(code, "python", limits=FAST.with_(nproc=20))
    assert result.status is Status.PASSED, result
    assert 0 < int(result.stdout) < 20
    assert sandbox_children() == []


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "data = bytearray(10 * 1024 ** 3)\nprint(len(data))\n"),
        ("python", "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))\n"),
        ("cpp", "#include <cstring>\n#include <cstdio>\nint main() {\n    size_t n = 10ull << 30;\n"
         "    char *p = new char[n];\n    memset(p, 1, n);\n    printf(\"%d\\n\", p[n - 1]);\n}\n"),
    ],
    ids=["python-10GB", "python-gradual", "cpp-10GB"],
)
def test_huge_allocation_fails_fast(sandbox: Sandbox, language: str, code: str) -> None:
    from .conftest import require_language

    require_language(language)
    start = time.monotonic()
    result = sandbox.run(code, language, limits=FAST.with_(memory_mb=256))
    assert result.status is Status.CRASHED, result
    assert result.detail.startswith("out of memory"), result.detail
    assert time.monotonic() - start < 8


def test_endless_output_is_cut(sandbox: Sandbox) -> None:
    cap = 8 * 1024
    start = time.monotonic()
    result = sandbox.run("while True:\n    print('x' * 1000)\n", "python", limits=FAST.with_(timeout_s=1.5, max_output_bytes=cap))
    wall = time.monotonic() - start
    assert result.status is Status.TIMEOUT, result
    assert result.truncated
    assert len(result.stdout.encode()) < cap + 200  # the cap plus the "[... N bytes dropped ...]" line
    assert "bytes of output dropped" in result.stdout
    assert wall < 1.5 + 3


def test_sleeper_is_killed_with_its_children(sandbox: Sandbox) -> None:
    """A program that starts a detached grandchild and sleeps: timeout status, on time, and neither it
    nor the grandchild survives (the whole PID namespace goes)."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.25"
    code = textwrap.dedent(f"""
        import subprocess, time
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        time.sleep({marker})
    """)
    start = time.monotonic()
    result = sandbox.run(code, "python", limits=FAST.with_(timeout_s=1.0))
    assert result.status is Status.TIMEOUT, result
    assert result.exit_code == -9
    assert time.monotonic() - start < 1.0 + 3
    time.sleep(0.2)
    assert _processes_with(marker) == []
    assert sandbox_children() == []


def test_cpu_limit_is_a_timeout(sandbox: Sandbox) -> None:
    """A busy loop with a CPU limit below the wall timeout is stopped by RLIMIT_CPU (SIGXCPU)."""
    result = sandbox.run("while True:\n    pass\n", "python", limits=Limits(timeout_s=10.0, cpu_s=1.0))
    assert result.status is Status.TIMEOUT, result
    assert "CPU time limit" in result.detail
    assert result.wall_s < 9


def test_file_size_and_tmpfs_limits(sandbox: Sandbox) -> None:
    """RLIMIT_FSIZE stops a big file in the run directory (Python ignores SIGXFSZ and gets EFBIG); the
    private /tmp is a size-limited tmpfs (ENOSPC), so neither the disk nor memory fills up."""
    code = textwrap.dedent("""
        import errno
        for path, size in [("big.bin", 8 << 20), ("/tmp/big.bin", 16 << 20)]:
            try:
                with open(path, "wb") as f:
                    for _ in range(size >> 20):
                        f.write(b"x" * (1 << 20))
                print("wrote", path)
            except OSError as exc:
                print("stopped", path, errno.errorcode[exc.errno])
    """)
    result = sandbox.run(code, "python", limits=FAST.with_(fsize_mb=4, tmpfs_mb=2))
    assert result.status is Status.PASSED, result
    assert "stopped big.bin EFBIG" in result.stdout
    assert "stopped /tmp/big.bin ENOSPC" in result.stdout  # the 2 MiB tmpfs fills before the 4 MiB file limit
