"""Execution sandbox for untrusted generated code (Python, JavaScript, Java, C++); see docs/sandbox.md.

    from megatron_qwen.sandbox import Sandbox
    result = Sandbox().run("print(1)", "python")   # RunResult(status=Status.PASSED, stdout="1\\n", ...)
"""

from megatron_qwen.sandbox.isolation import SandboxUnavailable
from megatron_qwen.sandbox.languages import LANGUAGES, ToolchainMissing, normalize_language, toolchain_problem
from megatron_qwen.sandbox.limits import DEFAULT_COMPILE_LIMITS, DEFAULT_LIMITS, Limits
from megatron_qwen.sandbox.pool import Program, run_many
from megatron_qwen.sandbox.result import RunResult, Status
from megatron_qwen.sandbox.runner import Sandbox, SandboxConfig, run_program

__all__ = [
    "DEFAULT_COMPILE_LIMITS",
    "DEFAULT_LIMITS",
    "LANGUAGES",
    "Limits",
    "Program",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "Status",
    "ToolchainMissing",
    "normalize_language",
    "run_many",
    "run_program",
    "toolchain_problem",
]
