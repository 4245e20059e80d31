"""`sandbox --language python|javascript|java|cpp FILE [--timeout S] [--memory-mb M]`: run one file in the
sandbox and print its result as one JSON object.

Exit codes: 0 when the program was run (whatever its status: the status is in the JSON), 2 for a usage
error or an unreadable file, 1 when the sandbox cannot run here. Errors are one line `error: ...` on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from megatron_qwen.sandbox.isolation import SandboxUnavailable
from megatron_qwen.sandbox.languages import LANGUAGES, ToolchainMissing
from megatron_qwen.sandbox.limits import DEFAULT_LIMITS
from megatron_qwen.sandbox.runner import Sandbox, SandboxConfig

JSON_FIELDS = ("status", "exit_code", "wall_s", "cpu_s", "stdout", "stderr", "truncated")


class UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the project CLI when it wires `megatron-qwen sandbox`)."""
    parser = _Parser(prog="megatron-qwen sandbox", description="Run one program in the execution sandbox; print a JSON result.")
    parser.add_argument("--language", required=True, choices=LANGUAGES, help="language of FILE")
    parser.add_argument("file", metavar="FILE", help="source file to run")
    parser.add_argument("--timeout", type=float, default=DEFAULT_LIMITS.timeout_s, help="wall-clock seconds")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_LIMITS.memory_mb, help="memory budget (MiB)")
    parser.add_argument(
        "--isolation", choices=("bwrap", "none"), default="bwrap", help="'none' runs WITHOUT isolation (unsafe)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
        limits = DEFAULT_LIMITS.with_(timeout_s=args.timeout, memory_mb=args.memory_mb)
    except (UsageError, ValueError) as exc:  # ValueError: Limits validation (e.g. --timeout 0)
        return _error(str(exc), 2)
    try:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
    except OSError as exc:
        return _error(f"cannot read {args.file}: {exc.strerror}", 2)
    except UnicodeDecodeError as exc:
        return _error(f"{args.file} is not UTF-8 text ({exc.reason} at byte {exc.start})", 2)
    try:
        result = Sandbox(SandboxConfig(isolation=args.isolation, limits=limits)).run(code, args.language)
    except (SandboxUnavailable, ToolchainMissing) as exc:
        return _error(str(exc), 1)
    payload = result.to_json()
    print(json.dumps({key: payload[key] for key in JSON_FIELDS}))
    return 0


def _error(message: str, code: int) -> int:
    """Print the one-line error and return its exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code
