"""The pool (order, concurrency bound), the opt-out and the refusal, and the `sandbox` command line."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time

import pytest

from megatron_qwen.sandbox import Program, Sandbox, SandboxConfig, SandboxUnavailable, Status, run_many
from megatron_qwen.sandbox import isolation as iso
from megatron_qwen.sandbox.cli import main

from .conftest import FAST


def test_pool_keeps_input_order_and_bounds_concurrency(sandbox: Sandbox) -> None:
    """Later programs finish first (shorter sleeps) yet come back in input order; 4 x 0.4 s sleeps with 2
    workers take at least 2 rounds (>= 0.8 s), so no more than 2 ran at once."""
    programs = [Program(f"import time\ntime.sleep({0.4 - 0.1 * (i % 2)})\nprint({i})\n", "python") for i in range(4)]
    start = time.monotonic()
    results = run_many(sandbox, programs, workers=2)
    elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert all(r.status is Status.PASSED for r in results)
    assert elapsed >= 0.6


def test_pool_mixed_statuses_with_progress(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    programs = [Program("print(1)", "python"), Program("raise SystemExit(2)", "python"),
                Program("import time\ntime.sleep(5)", "python", limits=FAST.with_(timeout_s=0.5))]  # fmt: skip
    results = run_many(sandbox, programs, workers=3, progress=True)
    assert [r.status for r in results] == [Status.PASSED, Status.FAILED, Status.TIMEOUT]
    assert "3/3" in capsys.readouterr().err


def test_refuses_without_working_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No bubblewrap on PATH -> a clear reason, and Sandbox() refuses unless isolation='none'."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "bubblewrap (bwrap) is not installed" in iso.bwrap_problem.__wrapped__()
    monkeypatch.setattr(iso, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable, match="not installed.*isolation='none'"):
        Sandbox()


def test_isolation_none_warns_and_really_is_unisolated(caplog: pytest.LogCaptureFixture) -> None:
    """The opt-out logs its warning, still applies rlimits, and (which is why it is opt-in) the program
    can write to the host's /tmp -- proving the isolation test above would notice an escape."""
    path = f"/tmp/sandbox-none-{secrets.token_hex(6)}"
    with caplog.at_level(logging.WARNING):
        sandbox = Sandbox(SandboxConfig(isolation="none", limits=FAST))
    assert "SANDBOX ISOLATION DISABLED" in caplog.text
    try:
        result = sandbox.run(f"import resource\nopen({path!r}, 'w').write('x')\n"
                             "print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n", "python")  # fmt: skip
        assert result.status is Status.PASSED, result
        assert os.path.exists(path)
        assert result.stdout.strip() == str(FAST.nproc)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_cli_prints_one_json_object(sandbox: Sandbox, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "prog.py"
    source.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
    assert main(["--language", "python", str(source), "--timeout", "5", "--memory-mb", "256"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"status", "exit_code", "wall_s", "cpu_s", "stdout", "stderr", "truncated"}
    assert (payload["status"], payload["exit_code"], payload["stdout"], payload["stderr"]) == ("failed", 3, "out\n", "err\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--language", "python", "/nonexistent/x.py"], "error: cannot read /nonexistent/x.py: No such file or directory"),
        (["--language", "cobol", "x"], "error: argument --language: invalid choice"),
        (["--language", "python", "x", "--timeout", "soon"], "error: argument --timeout: invalid float value"),
        (["--language", "python", "x", "--memory-mb", "0"], "error: sandbox limits must be positive: memory_mb=0"),
        (["x.py"], "error: the following arguments are required: --language"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


def test_python_dash_m_entry_point(sandbox: Sandbox, tmp_path) -> None:
    source = tmp_path / "prog.js"
    source.write_text("console.log(6 * 7)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    proc = subprocess.run([sys.executable, "-m", "megatron_qwen", "sandbox", "--language", "javascript", str(source)],
                          capture_output=True, text=True, timeout=60, cwd=repo)  # fmt: skip
    if "node not found" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stdout"] == "42\n"
