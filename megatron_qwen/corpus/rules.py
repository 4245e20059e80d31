"""Rule filters for source files (the heuristics of The Stack / StarCoder data work), thresholds from config.

Why it exists: minified bundles, generated code, data dumps in code files and embedded base64 blobs are
text the model should not learn from, and they are cheap to spot. Each check returns the reason it
failed; the datatrove filter drops the file with that reason (counted in the run's stats, examples in the
report). A threshold of 0 (or an empty list) turns its check off.
"""

from __future__ import annotations

import re

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from megatron_qwen.config import CorpusRulesConfig

_ENCODED = {}


def _encoded_pattern(min_chars: int) -> re.Pattern:
    if min_chars not in _ENCODED:  # base64 (with padding) or hex runs without whitespace
        _ENCODED[min_chars] = re.compile(rf"(?:[A-Za-z0-9+/]{{{min_chars},}}={{0,2}}|[0-9a-fA-F]{{{min_chars},}})")
    return _ENCODED[min_chars]


def rule_reason(text: str, path: str | None, rules: CorpusRulesConfig) -> str | None:
    """The first rule `text` breaks (a short reason), or None when the file passes."""
    if not text.strip():
        return "empty"
    name = (path or "").lower()
    if name and any(name.endswith(ext) for ext in rules.data_extensions):
        return "data_file"
    lines = text.splitlines() or [""]
    lengths = [len(line) for line in lines]
    if rules.max_line_length and max(lengths) > rules.max_line_length:
        return "max_line_length"
    if rules.max_mean_line_length and sum(lengths) / len(lengths) > rules.max_mean_line_length:
        return "mean_line_length"
    if rules.min_alnum_fraction and sum(c.isalnum() for c in text) / len(text) < rules.min_alnum_fraction:
        return "alnum_fraction"
    if rules.autogen_markers and rules.autogen_header_lines:
        head = "\n".join(lines[: rules.autogen_header_lines]).lower()
        if any(marker in head for marker in rules.autogen_markers):
            return "auto_generated"
    if rules.max_encoded_fraction and rules.encoded_run_chars:
        encoded = sum(len(m) for m in _encoded_pattern(rules.encoded_run_chars).findall(text))
        if encoded / len(text) > rules.max_encoded_fraction:
            return "encoded_data"
    return None


class CodeRuleFilter(BaseFilter):
    """datatrove filter over `rule_reason` (the path comes from the record's `path` field)."""

    name = "📏 code rules"

    def __init__(self, rules: CorpusRulesConfig, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.rules = rules

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = rule_reason(doc.text, doc.metadata.get("path"), self.rules)
        return True if reason is None else (False, reason)
