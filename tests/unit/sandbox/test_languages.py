"""Each language runs for real in the sandbox: a correct program passes with its output, a failing one
is `failed` with its exit code and message, a compile error in Java/C++ is `compile_error` with the
compiler's diagnostic."""

from __future__ import annotations

import pytest

from megatron_qwen.sandbox import Sandbox, Status
from megatron_qwen.sandbox.languages import java_class_names

from .conftest import require_language

CORRECT = {
    "python": "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('sum', add(2, 3))\n",
    "javascript": "const assert = require('node:assert');\nfunction add(a, b) { return a + b; }\n"
    "assert.strictEqual(add(2, 3), 5);\nconsole.log('sum', add(2, 3));\n",
    "java": "import java.util.*;\n\nclass Problem {\n    static int add(int a, int b) { return a + b; }\n"
    "    public static void main(String[] args) {\n        assert add(2, 3) == 5;\n"
    '        System.out.println("sum " + add(2, 3));\n    }\n}\n',
    "cpp": "#include <cassert>\n#include <iostream>\nint add(int a, int b) { return a + b; }\n"
    'int main() {\n    assert(add(2, 3) == 5);\n    std::cout << "sum " << add(2, 3) << std::endl;\n}\n',
}
# The same programs with a wrong `add`: the assertion fails at run time.
FAILING = {language: code.replace("a + b", "a - b") for language, code in CORRECT.items()}
# What each runtime prints when the assertion fails (the message proves the test ran and failed).
FAILURE_MESSAGE = {
    "python": "AssertionError",
    "javascript": "AssertionError",
    "java": "java.lang.AssertionError",
    "cpp": "Assertion",
}


@pytest.mark.parametrize("language", ["python", "javascript", "java", "cpp"])
def test_correct_program_passes(lang_sandbox: Sandbox, language: str) -> None:
    require_language(language)
    result = lang_sandbox.run(CORRECT[language], language)
    assert result.status is Status.PASSED, result
    assert result.exit_code == 0
    assert result.stdout.strip() == "sum 5"
    assert not result.truncated
    assert result.wall_s > 0


@pytest.mark.parametrize("language", ["python", "javascript", "java", "cpp"])
def test_failing_program_fails(lang_sandbox: Sandbox, language: str) -> None:
    require_language(language)
    result = lang_sandbox.run(FAILING[language], language)
    # C++'s assert() aborts: SIGABRT, which is a crash, not an ordinary non-zero exit.
    expected = Status.CRASHED if language == "cpp" else Status.FAILED
    assert result.status is expected, result
    assert result.exit_code != 0
    assert FAILURE_MESSAGE[language] in result.stderr
    assert "sum" not in result.stdout


@pytest.mark.parametrize(
    ("language", "code", "diagnostic"),
    [
        ("java", "class Problem {\n    public static void main(String[] a) { int x = \"s\"; }\n}\n", "incompatible types"),
        ("cpp", "int main() {\n    undeclared_name = 1;\n}\n", "undeclared_name"),
    ],
)
def test_compile_error(lang_sandbox: Sandbox, language: str, code: str, diagnostic: str) -> None:
    require_language(language)
    result = lang_sandbox.run(code, language)
    assert result.status is Status.COMPILE_ERROR, result
    assert diagnostic in result.stderr
    assert "error" in result.stderr


def test_java_public_class_names_the_file(lang_sandbox: Sandbox) -> None:
    """javac insists that a public class lives in its own-named file; the main class may differ."""
    require_language("java")
    code = (
        "public class Solution {\n    static class Inner { }\n    static int f() { return 7; }\n"
        "    public static void main(String[] args) { System.out.println(f()); }\n}\n"
        "class Helper { }\n"
    )
    assert java_class_names(code) == ("Solution", "Solution")
    result = lang_sandbox.run(code, "java")
    assert result.status is Status.PASSED, result
    assert result.stdout.strip() == "7"


@pytest.mark.parametrize(
    ("code", "names"),
    [
        ("class Main { public static void main(String[] a) {} }", ("Main", "Main")),
        # Braces and the word `class` inside strings and comments must not confuse the scanner.
        ('class A { String s = "}{ class B"; /* } class C */ }\nclass Problem { static void main(String[] a) {} }',
         ("Problem", "Problem")),
        ("public final class P { }\nclass Runner { public static void main(String[] a) {} }", ("P", "Runner")),
        ("interface I { }", ("Main", "Main")),
    ],
)
def test_java_class_names(code: str, names: tuple[str, str]) -> None:
    assert java_class_names(code) == names
