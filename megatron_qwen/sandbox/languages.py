"""How each language is compiled and run: source file name, commands, memory flags, toolchain paths.

Commands are built with the toolchains' real paths (symlinks such as /etc/alternatives resolved on the
host) and, when a toolchain lives outside /usr (pyenv, a JDK under /opt), its install root is bound
read-only into the sandbox at the same path.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass

from megatron_qwen.sandbox.isolation import traversable_by_others
from megatron_qwen.sandbox.limits import Limits

LANGUAGE_ALIASES = {
    "python": "python", "py": "python", "python3": "python",
    "javascript": "javascript", "js": "javascript", "node": "javascript",
    "java": "java",
    "cpp": "cpp", "c++": "cpp", "cc": "cpp",
}  # fmt: skip
LANGUAGES = ("python", "javascript", "java", "cpp")

# Java runtime flags: one GC thread, C1 only and no perf-data file keep start-up fast and the thread
# count (RLIMIT_NPROC counts threads) low; -ea turns on `assert`, which MultiPL-E's Java tests use.
_JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xshare:auto"]
CPP_FLAGS = ["-std=c++17", "-pipe"]


class ToolchainMissing(RuntimeError):
    """The compiler or interpreter of a language is not installed on this machine."""


def normalize_language(name: str) -> str:
    """'py' -> 'python', 'js' -> 'javascript', 'c++' -> 'cpp'; ValueError for anything else."""
    try:
        return LANGUAGE_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown language {name!r}; supported: {', '.join(LANGUAGES)}") from None


def heap_mb(limits: Limits) -> int:
    """Managed-heap size for the JVM and V8: 3/4 of the memory budget, so the runtime's own
    OutOfMemoryError comes before RLIMIT_DATA hits its non-heap allocations."""
    return max(32, limits.memory_mb * 3 // 4)


def _install_root(real_binary: str) -> str | None:
    """The directory to bind for a toolchain outside the system dirs: the parent of its bin/."""
    if real_binary.startswith(("/usr/", "/bin/", "/lib")):
        return None
    return os.path.dirname(os.path.dirname(real_binary))


def find_python(unprivileged: bool) -> str:
    """The interpreter for sandboxed Python: the one running us (its base interpreter, not the venv, so
    the project's packages stay out) when the sandbox uid can read it, else the system python3. Under
    root with pyenv in /root (mode 700) this is the system python3, a different minor version."""
    candidates = [os.path.realpath(sys.executable), shutil.which("python3", path="/usr/local/bin:/usr/bin")]
    for path in candidates:
        if path and os.path.isfile(path):
            root = _install_root(path)
            if not unprivileged or traversable_by_others(root or os.path.dirname(path)):
                return path
    raise ToolchainMissing("no Python interpreter readable by the sandbox user")


def _resolve(binary: str, package: str) -> str:
    """Real path of a toolchain binary, or ToolchainMissing naming the package to install."""
    found = shutil.which(binary)
    if found is None:
        raise ToolchainMissing(f"{binary} not found: install {package} (see .ci/install_sandbox.sh)")
    return os.path.realpath(found)


_TOKEN = re.compile(
    r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|[{}]|\bclass\s+(\w+)'
    r"|\bstatic\s+void\s+main\s*\(|\bpublic\b",
    re.S,
)


def java_class_names(code: str) -> tuple[str, str]:
    """(file stem, main class) of a Java program: the file is named after the public top-level class
    (javac requires it), the main class is the top-level class whose body declares `static void main`.
    A light scanner that skips comments and string literals and tracks brace depth; defaults to Main."""
    depth, current, public, main, last_public = 0, None, None, None, -10
    for match in _TOKEN.finditer(code):
        token = match.group(0)
        if token == "{":
            depth += 1
        elif token == "}":
            depth = max(0, depth - 1)
        elif token == "public":
            last_public = match.end()
        elif match.group(1) and depth == 0:
            current = match.group(1)
            if code[last_public : match.start()].strip() in ("", "final", "abstract") and last_public >= 0:
                public = public or current
        elif token.startswith("static") and main is None and depth >= 1:
            main = current
    main = main or public or "Main"
    return public or main, main


@dataclass(frozen=True)
class Commands:
    """What to write and run for one program."""

    source_name: str
    compile: list[str] | None
    run: list[str]
    ro_binds: tuple[str, ...]
    headroom_mb: int


def commands(language: str, code: str, limits: Limits, compile_limits: Limits, unprivileged: bool) -> Commands:
    """Commands of `code` in `language` (already normalized)."""
    if language == "python":
        python = find_python(unprivileged)
        binds = tuple(filter(None, [_install_root(python)]))
        return Commands("main.py", None, [python, "-E", "-s", "main.py"], binds, 256)
    if language == "javascript":
        node = _resolve("node", "nodejs")
        run = [node, f"--max-old-space-size={heap_mb(limits)}", "main.js"]
        return Commands("main.js", None, run, tuple(filter(None, [_install_root(node)])), 2048)
    if language == "java":
        javac, java = _resolve("javac", "default-jdk-headless"), _resolve("java", "default-jdk-headless")
        stem, main = java_class_names(code)
        jflags = [f"-J{flag}" for flag in [*_JVM_FLAGS, f"-Xmx{heap_mb(compile_limits)}m"]]
        compile_ = [javac, *jflags, "-encoding", "UTF-8", "-nowarn", "-d", ".", f"{stem}.java"]
        run = [java, *_JVM_FLAGS, f"-Xmx{heap_mb(limits)}m", "-ea", "-cp", ".", main]
        binds = tuple({root for root in (_install_root(javac), _install_root(java)) if root})
        return Commands(f"{stem}.java", compile_, run, binds, 2048)
    if language == "cpp":
        gxx = _resolve("g++", "g++")
        return Commands("main.cpp", [gxx, *CPP_FLAGS, "-o", "main", "main.cpp"], ["./main"], (), 256)
    raise ValueError(f"unknown language {language!r}")


def toolchain_problem(language: str) -> str | None:
    """Why `language` cannot run here (missing binaries), or None."""
    needs = {"python": [], "javascript": [("node", "nodejs")], "cpp": [("g++", "g++")],
             "java": [("javac", "default-jdk-headless"), ("java", "default-jdk-headless")]}  # fmt: skip
    try:
        for binary, package in needs[normalize_language(language)]:
            _resolve(binary, package)
    except ToolchainMissing as exc:
        return str(exc)
    return None
