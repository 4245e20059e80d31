"""The verifier alone on hand-written cases in all four languages: the correct solution is kept; a syntax
error, a compile error (Java, C++), a wrong answer, an infinite loop and a solution that reads the network
are each dropped with the right reason. One `verify` call runs every case (sandbox workers in parallel)."""

from __future__ import annotations

import pytest

from megatron_qwen.sandbox import toolchain_problem
from megatron_qwen.synth.verify import (
    Check,
    Verifier,
    assemble,
    extract_code,
    self_containment_problem,
)

TESTS = {
    "python": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n",
    "javascript": "const assert = require('assert');\nassert.strictEqual(add(2, 3), 5);\nassert.strictEqual(add(-1, 1), 0);\n",
    "java": "import java.util.Objects;\npublic class Main {\n  public static void main(String[] args) {\n"
            "    if (!Objects.equals(Solution.add(2, 3), 5)) throw new AssertionError(\"add(2, 3)\");\n  }\n}\n",
    "cpp": "#include <cassert>\nint main() {\n  assert(add(2, 3) == 5);\n  assert(add(-1, 1) == 0);\n  return 0;\n}\n",
}

CASES = {
    "python": {
        "passed": "def add(a, b):\n    return a + b\n",
        "parse_error": "def add(a, b)\n    return a + b\n",
        "failed_test": "def add(a, b):\n    return a - b\n",
        "timeout": "def add(a, b):\n    while True:\n        pass\n",
        "not_self_contained": "import socket\n\ndef add(a, b):\n    socket.create_connection(('example.com', 80))\n"
                              "    return a + b\n",
    },
    "javascript": {
        "passed": "function add(a, b) {\n  return a + b;\n}\n",
        "parse_error": "function add(a, b {\n  return a + b;\n}\n",
        "failed_test": "function add(a, b) {\n  return a * b;\n}\n",
        "timeout": "function add(a, b) {\n  while (true) {}\n}\n",
        "not_self_contained": "const http = require('http');\nfunction add(a, b) {\n  http.get('http://example.com');\n"
                              "  return a + b;\n}\n",
    },
    "java": {
        "passed": "import java.util.List;\npublic class Solution {\n  static int add(int a, int b) { return a + b; }\n}\n",
        "parse_error": "class Solution {\n  static int add(int a, int b) { return a + b }\n}\n",
        "compile_error": "class Solution {\n  static int add(int a, int b) { return \"a\" + b; }\n}\n",
        "failed_test": "class Solution {\n  static int add(int a, int b) { return a - b; }\n}\n",
        "timeout": "class Solution {\n  static int add(int a, int b) { while (true) { } }\n}\n",
        "not_self_contained": "import java.net.Socket;\nclass Solution {\n  static int add(int a, int b) {\n"
                              "    try { new Socket(\"example.com\", 80).close(); } catch (Exception e) { }\n"
                              "    return a + b;\n  }\n}\n",
    },
    "cpp": {
        "passed": "int add(int a, int b) { return a + b; }\n",
        "parse_error": "int add(int a, int b) { return a + b }\n",
        "compile_error": "int add(int a, int b) { return a + undefined_name; }\n",
        "failed_test": "int add(int a, int b) { return a * b; }\n",
        "timeout": "int add(int a, int b) {\n  volatile long x = 0;\n  while (true) { x = x + 1; }\n  return a + b;\n}\n",
        "not_self_contained": "#include <sys/socket.h>\nint add(int a, int b) {\n  int s = socket(2, 1, 0);\n"
                              "  return a + b + 0 * s;\n}\n",
    },
}


@pytest.fixture(scope="module")
def verdicts(synth_sandbox):
    missing = {lang: toolchain_problem(lang) for lang in CASES if toolchain_problem(lang)}
    if missing:
        pytest.skip(f"toolchains missing: {missing}")
    cases = [(lang, expected, code) for lang, by in CASES.items() for expected, code in by.items()]
    found = Verifier(synth_sandbox, workers=2).verify([Check(code, lang, TESTS[lang]) for lang, _, code in cases])
    return {(lang, expected): v for (lang, expected, _), v in zip(cases, found)}


@pytest.mark.parametrize("language", list(CASES))
def test_each_case_gets_its_reason(verdicts, language):
    for expected in CASES[language]:
        v = verdicts[(language, expected)]
        assert v.outcome == expected, (language, expected, v)


def test_static_only_when_there_are_no_tests(synth_sandbox):
    """Without tests nothing runs: the static checks decide (parse, self-containment)."""
    checks = [Check(CASES["python"]["failed_test"], "python"), Check(CASES["cpp"]["parse_error"], "cpp"),
              Check(CASES["javascript"]["not_self_contained"], "javascript"), Check("  \n", "python")]
    assert [v.outcome for v in Verifier(synth_sandbox).verify(checks)] == \
        ["static_ok", "parse_error", "not_self_contained", "parse_error"]


def test_self_containment_rules():
    assert self_containment_problem("import subprocess\n", "python")
    assert self_containment_problem("from urllib.request import urlopen\n", "python")
    assert self_containment_problem("import os, requests\n", "python")
    assert self_containment_problem("import os\nos.system('ls')\n", "python")
    assert self_containment_problem("import json\nimport collections\n", "python") is None
    assert self_containment_problem("const cp = require('child_process');\n", "javascript")
    assert self_containment_problem("import net from 'node:net';\n", "javascript")
    assert self_containment_problem("const fs = require('fs');\n", "javascript") is None
    assert self_containment_problem("import java.net.URL;\n", "java")
    assert self_containment_problem("Process p = new ProcessBuilder(\"ls\").start();\n", "java")
    assert self_containment_problem("import java.util.*;\n", "java") is None
    assert self_containment_problem("#include <arpa/inet.h>\n", "cpp")
    assert self_containment_problem("int main() { system(\"ls\"); }\n", "cpp")
    assert self_containment_problem("#include <vector>\nint f(std::vector<int> v);\n", "cpp") is None


def test_extract_and_assemble():
    reply = "Here it is:\n```python\ndef f():\n    return 1\n```\nand a test:\n```python\nassert f() == 1\n```"
    assert extract_code(reply, "python") == "def f():\n    return 1"
    assert extract_code("```C++\nint x;\n```", "cpp") == "int x;"
    assert extract_code("no fence here", "python") == "no fence here"
    java = assemble(CASES["java"]["passed"], TESTS["java"], "java")
    assert java.splitlines()[:2] == ["import java.util.List;", "import java.util.Objects;"]
    assert "public class Solution" not in java and "public class Main" in java
