"""The prompt templates (package data in megatron_qwen/synth/prompts/, each overridable by a file path).

Templates use `{{name}}` placeholders (not str.format: code is full of braces)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

STEPS = ("instruction", "answer", "tests", "score", "pairwise")
FIELDS = {
    "instruction": {"language", "code"},
    "answer": {"language", "instruction", "language_note"},
    "tests": {"language", "instruction", "language_note"},
    "score": {"language", "instruction", "answer"},
    "pairwise": {"language", "instruction", "answer_a", "answer_b"},
}
LANGUAGE_NOTES = {
    "python": "",
    "javascript": " Plain Node.js (CommonJS), no npm packages.",
    "java": " Put the solution in a class named Solution (not public); the tests go in `public class Main` with "
            "`public static void main(String[] args)`.",
    "cpp": " C++17; the tests go in `int main()` and use assert from <cassert>.",
}
DISPLAY = {"python": "Python", "javascript": "JavaScript", "java": "Java", "cpp": "C++"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def load_templates(overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """The five templates: package defaults, each replaced by the file named in `overrides[step]`. An
    override that names a placeholder its step does not fill is refused (ValueError naming the file)."""
    overrides = overrides or {}
    templates = {}
    for step in STEPS:
        path = overrides.get(step)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            unknown = set(_PLACEHOLDER.findall(text)) - FIELDS[step]
            if unknown:
                raise ValueError(f"{path}: unknown placeholder(s) {sorted(unknown)} in the {step} prompt; "
                                 f"available: {sorted(FIELDS[step])}")
        else:
            text = resources.files("megatron_qwen.synth").joinpath("prompts", f"{step}.txt").read_text("utf-8")
        templates[step] = text
    return templates


def render(template: str, **fields: str) -> str:
    """Fill `{{name}}` placeholders in one pass (a value containing `{{x}}` is not expanded again)."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), template)
