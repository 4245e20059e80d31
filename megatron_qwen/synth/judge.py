"""The judge model: checklist scores of single answers, and pairwise verdicts asked in both orders.

Checklist score: the judge answers each checklist item "N. yes|no"; the score is the fraction of yes over
the items of the prompt (0..1). A reply with no readable item scores None (recorded, never kept).

Pairwise: a judge may prefer whichever answer it sees first. Each pair is asked twice, (x, y) as (A, B)
and then (y, x) as (A, B); the pair is kept only when both verdicts name the same answer. A judge that
always says "A" therefore never yields a pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_ITEM = re.compile(r"^\s*(\d+)\s*[.):]\s*\**\s*(yes|no)\b", re.I | re.M)
_CHECKLIST_ITEM = re.compile(r"^\s*(\d+)\.\s+\S", re.M)
_VERDICT = re.compile(r"VERDICT\s*:?\s*\**\s*\[?([AB])\b", re.I)


def checklist_size(template: str) -> int:
    """Number of checklist items in a score prompt (lines "N. ..." before the task)."""
    head = template.split("{{instruction}}")[0]
    numbers = {int(m.group(1)) for m in _CHECKLIST_ITEM.finditer(head)}
    return max(numbers) if numbers else 0


def parse_checklist(reply: str, items: int) -> float | None:
    """Fraction of checklist items answered yes; None when no item could be read. Items not answered
    count as no; an item answered twice counts once (its first answer)."""
    answers: dict[int, bool] = {}
    for m in _ITEM.finditer(reply):
        number = int(m.group(1))
        if 1 <= number <= items and number not in answers:
            answers[number] = m.group(2).lower() == "yes"
    if not answers or items <= 0:
        return None
    return sum(answers.values()) / items


def parse_verdict(reply: str) -> str | None:
    """'A' or 'B' from "VERDICT: X" (the last one), else a reply that is just "A" or "B"; None otherwise."""
    found = _VERDICT.findall(reply)
    if found:
        return found[-1].upper()
    bare = reply.strip().strip(".*").upper()
    return bare if bare in ("A", "B") else None


@dataclass(frozen=True)
class PairVerdict:
    winner: int | None
    """0: the first answer given to `both_orders` is better, 1: the second, None: no agreement."""
    first: str | None   # verdict with (x, y) shown as (A, B)
    second: str | None  # verdict with (y, x) shown as (A, B)
    keys: tuple[str, str] = ("", "")


def both_orders(ask: Callable[[str, str], tuple[str, str | None]], x: str, y: str) -> PairVerdict:
    """Ask `ask(answer_a, answer_b) -> (request key, 'A'|'B'|None)` in both orders; agreement or nothing."""
    key1, v1 = ask(x, y)
    key2, v2 = ask(y, x)
    winner = None
    if v1 == "A" and v2 == "B":
        winner = 0
    elif v1 == "B" and v2 == "A":
        winner = 1
    return PairVerdict(winner, v1, v2, (key1, key2))
