"""Run `megatron-qwen serve` as a subprocess for a test: wait for its URL, stop it with SIGINT afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serving(args: list[str], start_timeout: float = 300) -> Iterator[str]:
    """`megatron-qwen serve ARGS --port 0`; yields its base URL (http://HOST:PORT, without /v1)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "megatron_qwen", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(start_timeout, proc.kill)  # a server that never says it listens must not hang
    watchdog.start()
    url, seen = None, []
    for line in proc.stdout:  # the "serving ... on http://HOST:PORT/v1" line comes once the port listens
        seen.append(line)
        if found := re.search(r"on (http://\S+)/v1", line):
            url = found.group(1)
            break
    watchdog.cancel()
    if url is None:
        proc.wait(timeout=30)
        pytest.fail("server did not start:\n" + "".join(seen[-30:]))
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
