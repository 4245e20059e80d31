"""Reading the judge: checklist replies -> scores, pairwise replies -> verdicts."""

from __future__ import annotations

from megatron_qwen.synth.judge import checklist_size, parse_checklist, parse_verdict
from megatron_qwen.synth.prompts import load_templates


def test_checklist_score_is_the_fraction_of_yes():
    assert checklist_size(load_templates()["score"]) == 5
    assert parse_checklist("1. yes\n2. no\n3. yes\n4. yes\n5. no", 5) == 0.6
    assert parse_checklist("1) Yes\n2: **no**\n3. yes", 5) == 0.4  # unanswered items count as no
    assert parse_checklist("1. yes\n1. no\n7. yes", 5) == 0.2     # first answer per item; out of range ignored
    assert parse_checklist("Looks great to me!", 5) is None


def test_verdicts():
    assert parse_verdict("VERDICT: A") == "A"
    assert parse_verdict("Thinking... verdict: b") == "B"
    assert parse_verdict("VERDICT: A\nOn reflection, VERDICT: B") == "B"
    assert parse_verdict("B.") == "B"
    assert parse_verdict("Both are fine") is None
