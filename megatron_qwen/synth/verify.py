"""Verification of a generated answer: parse, static self-containment check, then execution with its tests.

Order and outcomes (the first failing check names the drop reason):
  parse_error          tree-sitter finds syntax errors or missing nodes in the answer or in answer+tests
  not_self_contained   the code imports or calls what reaches the network, other processes or the host
                       (a static check on the source; the sandbox would stop it too, but a sample that
                       needs the network is not a good training sample even when it happens to pass)
  compile_error        javac / g++ rejected answer+tests
  failed_test          the program (answer followed by its tests) exited non-zero
  timeout              wall clock or CPU limit
  crashed              killed by a signal or out of memory
  passed               exit status 0
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_qwen.data.formats.ast_fim import UnparseableError, parse
from megatron_qwen.sandbox import Limits, Program, Sandbox, Status, run_many

LANGUAGES = ("python", "javascript", "java", "cpp")
FENCE_TAGS = {"python": ("python", "py", "python3"), "javascript": ("javascript", "js", "node"),
              "java": ("java",), "cpp": ("cpp", "c++", "cc", "cxx", "c")}

PASSED = "passed"
DROP_REASONS = ("parse_error", "not_self_contained", "compile_error", "failed_test", "timeout", "crashed")
SANDBOX_REASONS = {Status.COMPILE_ERROR: "compile_error", Status.FAILED: "failed_test", Status.TIMEOUT: "timeout",
                   Status.CRASHED: "crashed"}

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def extract_code(text: str, language: str) -> str:
    """The first fenced block tagged with the language (else the first fenced block, else the whole text)."""
    blocks = _FENCE.findall(text)
    for tag, body in blocks:
        if tag.lower() in FENCE_TAGS[language]:
            return body.strip("\n")
    if blocks:
        return blocks[0][1].strip("\n")
    return text.strip("\n")


# What a self-contained program must not use, per language: (pattern, what it is).
_FORBIDDEN: dict[str, list[tuple[str, str]]] = {
    "python": [
        (r"^\s*(?:import|from)\s+(?:socket|ssl|urllib|urllib2|urllib3|requests|httpx|aiohttp|http|ftplib|smtplib|"
         r"poplib|imaplib|telnetlib|xmlrpc|socketserver|subprocess|multiprocessing|ctypes|webbrowser|pty)\b",
         "network/process import"),
        (r"^\s*import\s+[\w., ]*\b(?:socket|urllib|requests|http|subprocess|multiprocessing|ctypes)\b",
         "network/process import"),
        (r"\b__import__\s*\(|\bimportlib\b", "dynamic import"),
        (r"\bos\s*\.\s*(?:system|popen|exec\w*|fork\w*|spawn\w*|kill|chroot|posix_spawn\w*)\b", "process call"),
    ],
    "javascript": [
        (r"""\brequire\s*\(\s*['"`](?:node:)?(?:net|http|https|http2|child_process|dgram|tls|dns|cluster|"""
         r"""worker_threads|inspector)['"`]\s*\)""", "network/process module"),
        (r"""\bimport\b[^;\n]*?['"`](?:node:)?(?:net|http|https|http2|child_process|dgram|tls|dns|cluster|"""
         r"""worker_threads)['"`]""", "network/process module"),
        (r"\bfetch\s*\(|\bXMLHttpRequest\b|\bWebSocket\b|\bprocess\s*\.\s*binding\b", "network API"),
    ],
    "java": [
        (r"\bjava\s*\.\s*net\b|\bjavax\s*\.\s*net\b|\bjava\s*\.\s*nio\s*\.\s*channels\b|\bjava\s*\.\s*rmi\b",
         "network package"),
        (r"\bProcessBuilder\b|\bRuntime\s*\.\s*getRuntime\s*\(\s*\)\s*\.\s*exec\b|\bSocket\b|\bURL\s*\(",
         "process/network call"),
    ],
    "cpp": [
        (r"#\s*include\s*<\s*(?:sys/socket\.h|netinet/[\w.]+|arpa/inet\.h|netdb\.h|sys/un\.h|spawn\.h|"
         r"sys/ptrace\.h)\s*>", "network/process header"),
        (r"\b(?:system|popen|fork|vfork|execl|execlp|execle|execv|execvp|execvpe|socket|connect|posix_spawn)\s*\(",
         "process/network call"),
    ],
}
_COMPILED = {lang: [(re.compile(p, re.M), what) for p, what in rules] for lang, rules in _FORBIDDEN.items()}


def self_containment_problem(code: str, language: str) -> str | None:
    """None when the source uses nothing forbidden, else what it uses (e.g. "network/process import: socket")."""
    for pattern, what in _COMPILED[language]:
        match = pattern.search(code)
        if match:
            return f"{what}: {match.group(0).strip()[:60]}"
    return None


def parse_problem(code: str, language: str) -> str | None:
    try:
        parse(code.encode("utf-8"), language)
    except UnparseableError as err:
        return str(err)
    return None


_ASSERTION = re.compile(r"Assertion [`'\"].*[`'\"] failed")
_JAVA_IMPORT = re.compile(r"^\s*import\s+(?:static\s+)?[\w.]+(?:\.\*)?\s*;\s*$", re.M)
_JAVA_PUBLIC_CLASS = re.compile(r"^(\s*)public\s+((?:final\s+|abstract\s+)*(?:class|interface|enum|record)\b)", re.M)


def assemble(answer: str, tests: str, language: str) -> str:
    """The program the sandbox runs: the answer followed by its tests, in one file. For Java the imports of
    both are hoisted to the top and the answer's top-level types lose `public` (only the tests' class with
    `main` may be public: the file is named after it)."""
    if language != "java":
        return f"{answer.rstrip()}\n\n{tests.strip()}\n"
    imports = sorted(set(m.strip() for m in _JAVA_IMPORT.findall(answer) + _JAVA_IMPORT.findall(tests)))
    body_answer = _JAVA_PUBLIC_CLASS.sub(r"\1\2", _JAVA_IMPORT.sub("", answer)).strip()
    body_tests = _JAVA_IMPORT.sub("", tests).strip()
    return "\n".join(imports) + ("\n\n" if imports else "") + f"{body_answer}\n\n{body_tests}\n"


@dataclass(frozen=True)
class Check:
    """One answer with its tests (None: static checks only)."""

    answer: str
    language: str
    tests: str | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: str
    """`passed`, or one of DROP_REASONS; `static_ok` when there were no tests and the static checks passed."""
    detail: str = ""
    wall_s: float = 0.0


STATIC_OK = "static_ok"


def static_check(check: Check) -> Verdict | None:
    """The parse and self-containment verdict, or None when both pass."""
    if not check.answer.strip():
        return Verdict("parse_error", "empty answer")
    problem = parse_problem(check.answer, check.language)
    if problem:
        return Verdict("parse_error", f"answer: {problem}")
    problem = self_containment_problem(check.answer, check.language)
    if problem:
        return Verdict("not_self_contained", problem)
    if check.tests is not None:
        program = assemble(check.answer, check.tests, check.language)
        problem = parse_problem(program, check.language)
        if problem:
            return Verdict("parse_error", f"answer+tests: {problem}")
    return None


class Verifier:
    """Static checks, then the sandbox (`workers` programs at a time) for every answer that has tests."""

    def __init__(self, sandbox: Sandbox, *, workers: int = 2, limits: Limits | None = None,
                 progress: bool = False):
        self.sandbox = sandbox
        self.workers = workers
        self.limits = limits
        self.progress = progress

    def verify(self, checks: Sequence[Check]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [static_check(c) for c in checks]
        to_run = [i for i, c in enumerate(checks) if verdicts[i] is None and c.tests is not None]
        for i, c in enumerate(checks):
            if verdicts[i] is None and c.tests is None:
                verdicts[i] = Verdict(STATIC_OK)
        programs = [Program(assemble(checks[i].answer, checks[i].tests or "", checks[i].language),
                            checks[i].language, limits=self.limits) for i in to_run]
        results = run_many(self.sandbox, programs, workers=self.workers, progress=self.progress,
                           description="verify") if programs else []
        for i, result in zip(to_run, results):
            if result.status == Status.PASSED:
                verdicts[i] = Verdict(PASSED, wall_s=result.wall_s)
            else:
                tail = (result.detail or "") + " " + (result.stderr[-300:] or "")
                reason = SANDBOX_REASONS[result.status]
                if result.status == Status.CRASHED and _ASSERTION.search(result.stderr):
                    reason = "failed_test"  # C/C++ assert() aborts (SIGABRT): a failed test, not a crash
                verdicts[i] = Verdict(reason, tail.strip(), result.wall_s)
        return [v for v in verdicts if v is not None]
