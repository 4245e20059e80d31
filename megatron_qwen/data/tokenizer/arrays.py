"""The flat layout every encoder returns for a batch: all ids in one int32 array plus int64 offsets.

Why it exists: the preprocessing hot path gathers documents out of one array per chunk; every encoder
(gigatoken, tiktoken, Hugging Face) hands its batch over in this one shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of ids -> (all ids in one int32 array, int64 offsets with len(arrays) + 1 entries)."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    tokens = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
    return tokens, offsets
