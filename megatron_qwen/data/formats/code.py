"""Document builders for the pretraining formats of docs/formats.md: file-level FIM and repository documents.

Why it exists: the token layout of FIM and repo documents is the contract between data preparation,
training and evaluation. Builders here return `Piece` lists (text pieces are encoded separately with
`encode_raw`, control ids are inserted as ids), so literal control-token text in a source file stays
text. `undo_fim` inverts the permutation, for tests and for evaluation.

Layouts (ids in the real tokenizer):
  PSM   <|fim_prefix|>{pre}<|fim_suffix|>{suf}<|fim_middle|>{mid}<|endoftext|>
  SPM   <|fim_prefix|><|fim_suffix|>{suf}<|fim_middle|>{pre}{mid}<|endoftext|>   (FIM paper's SPM variant 2,
        the one megatron.training's FIM dataset produces)
  repo  <|repo_name|>{name}\\n<|file_sep|>{path1}\\n{content1}\\n<|file_sep|>{path2}\\n{content2}<|endoftext|>
  repo FIM (last file)  ...<|file_sep|>{path}\\n<|fim_prefix|>{pre}<|fim_suffix|>{suf}<|fim_middle|>{mid}<|endoftext|>
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from megatron_qwen.data.preprocess.modes.registry import Piece
from megatron_qwen.data.tokenizer.qwen import (
    EOD_TOKEN,
    FILE_SEP,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    REPO_NAME,
)


@dataclass(frozen=True)
class ControlIds:
    """The control ids the formats use, looked up once from a tokenizer."""

    eod: int
    fim_prefix: int
    fim_middle: int
    fim_suffix: int
    repo_name: int | None = None
    file_sep: int | None = None

    @classmethod
    def of(cls, tokenizer, repo: bool = False) -> ControlIds:
        get = tokenizer.token_id
        return cls(
            eod=get(EOD_TOKEN),
            fim_prefix=get(FIM_PREFIX),
            fim_middle=get(FIM_MIDDLE),
            fim_suffix=get(FIM_SUFFIX),
            repo_name=get(REPO_NAME) if repo else None,
            file_sep=get(FILE_SEP) if repo else None,
        )


def fim_split_points(text: str, rng: random.Random, line_level: bool = False) -> tuple[int, int]:
    """Two cut points 0 <= i <= j <= len(text), uniform over characters (or over line starts)."""
    if line_level:
        starts = [0] + [k + 1 for k, c in enumerate(text) if c == "\n" and k + 1 < len(text)] + [len(text)]
        i, j = sorted(rng.choice(starts) for _ in range(2))
        return i, j
    i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
    return i, j


def fim_split(text: str, rng: random.Random, line_level: bool = False) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of `text` cut at random points."""
    i, j = fim_split_points(text, rng, line_level)
    return text[:i], text[i:j], text[j:]


def fim_pieces(prefix: str, middle: str, suffix: str, ids: ControlIds, spm: bool = False) -> list[Piece]:
    """The FIM permutation of three text parts, without the trailing end-of-document."""
    if spm:
        return [Piece(ids.fim_prefix), Piece(ids.fim_suffix), Piece(suffix), Piece(ids.fim_middle),
                Piece(prefix), Piece(middle)]
    return [Piece(ids.fim_prefix), Piece(prefix), Piece(ids.fim_suffix), Piece(suffix), Piece(ids.fim_middle),
            Piece(middle)]


def file_document(text: str, ids: ControlIds, rng: random.Random, fim_rate: float, spm_rate: float,
                  line_level: bool = False) -> tuple[list[Piece], str | None]:
    """One source file as a document: FIM-permuted with probability `fim_rate`; returns (pieces, 'psm'|'spm'|None)."""
    if rng.random() >= fim_rate:
        return [Piece(text), Piece(ids.eod)], None
    spm = rng.random() < spm_rate
    prefix, middle, suffix = fim_split(text, rng, line_level)
    return fim_pieces(prefix, middle, suffix, ids, spm) + [Piece(ids.eod)], ("spm" if spm else "psm")


def undo_fim(tokens, ids: ControlIds) -> list[int]:
    """Put a PSM or SPM document's parts back in order: the ids of prefix+middle+suffix (and a trailing EOD).

    Works on any token list containing one FIM block; tokens before `<|fim_prefix|>` (e.g. a repo header)
    are kept in place. Parts are returned as ids; decode them to compare text.
    """
    t = list(np.asarray(tokens).tolist())
    p = t.index(ids.fim_prefix)
    head, body = t[:p], t[p + 1:]
    tail: list[int] = []
    if body and body[-1] == ids.eod:
        body, tail = body[:-1], [ids.eod]
    if body and body[0] == ids.fim_suffix:  # SPM: <pre><suf> suf <mid> pre+mid
        m = body.index(ids.fim_middle)
        suffix, prefix_middle = body[1:m], body[m + 1:]
        return head + prefix_middle + suffix + tail
    s = body.index(ids.fim_suffix)
    m = body.index(ids.fim_middle)
    prefix, suffix, middle = body[:s], body[s + 1:m], body[m + 1:]
    return head + prefix + middle + suffix + tail


def undo_fim_text(tokens, ids: ControlIds, decode) -> str:
    """Like `undo_fim`, but decodes each part separately (so a cut inside a character still joins back)."""
    t = list(np.asarray(tokens).tolist())
    if ids.fim_prefix not in t:
        return decode(t)
    p = t.index(ids.fim_prefix)
    head, body = t[:p], t[p + 1:]
    tail = ""
    if body and body[-1] == ids.eod:
        body, tail = body[:-1], decode([ids.eod])
    if body and body[0] == ids.fim_suffix:
        m = body.index(ids.fim_middle)
        # SPM joins prefix and middle into one run of ids; both were encoded separately but decode as one.
        return decode(head) + decode(body[m + 1:]) + decode(body[1:m]) + tail
    s, m = body.index(ids.fim_suffix), body.index(ids.fim_middle)
    return decode(head) + decode(body[:s]) + decode(body[m + 1:]) + decode(body[s + 1:m]) + tail


# -- repository documents ------------------------------------------------------------------------------

def repo_file_text(path: str, content: str, last: bool) -> str:
    """The text that follows `<|file_sep|>` for one file: path, newline, content, and a newline unless last."""
    return f"{path}\n{content}" if last else f"{path}\n{content}\n"


def greedy_pack(sizes: list[int], budget: int) -> list[list[int]]:
    """Split item indices, in order, into consecutive groups whose sizes sum to at most `budget`.

    An item larger than the budget gets a group of its own (the caller truncates it).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for k, size in enumerate(sizes):
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(k)
        used += size
    if current:
        groups.append(current)
    return groups

