"""The `repo` mode: repositories packed as repo-level documents (stage 2 of docs/formats.md).

Why it exists: stage 2 trains on whole repositories, `<|repo_name|>` header then `<|file_sep|>`-separated
files in random or dependency order, with repo-level FIM on the last file of a document at `--fim-rate`.
A repository longer than `--max-tokens` is split at file boundaries, the header repeated in every piece;
a single file that does not fit on its own is truncated (counted as `truncated_files`). This mode encodes
its text itself so that it can measure pieces exactly: one batch call for the files of a repository, one
for every other text piece of its documents (random draws made first, in document order).

Input: JSONL records `{"name": ..., "files": [{"path": ..., "content": ...}, ...]}` (`repo_name` is
accepted for `name`), or directories given with `--input-dir` (each directory is one repository; binary
and non-UTF-8 files are skipped and counted).
"""

from __future__ import annotations

import argparse
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_qwen.data.formats.code import ControlIds, fim_split_points, greedy_pack, repo_file_text
from megatron_qwen.data.formats.repo_order import file_order
from megatron_qwen.data.preprocess.modes.registry import (
    Document,
    ModeContext,
    Piece,
    SkipRecord,
    register_mode,
)
from megatron_qwen.data.tokenizer.qwen import EOD_TOKEN, FIM_TOKENS, REPO_TOKENS

BINARY_SNIFF_BYTES = 8192


def usable_files(record: dict, ctx: ModeContext) -> list[tuple[str, str]]:
    """(path, content) pairs of a repo record; bad entries counted as skipped files, not fatal."""
    files = record.get("files")
    if not isinstance(files, list):
        raise SkipRecord("missing field 'files'" if files is None else "field 'files' is not a list")
    out, seen = [], set()
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path or not isinstance(content, str):
            ctx.count("skipped_files:missing path or content")
            continue
        if "\x00" in content:
            ctx.count("skipped_files:binary")
            continue
        if path in seen:
            ctx.count("skipped_files:duplicate path")
            continue
        if ctx.decontam is not None:
            hit = ctx.decontam.find(content)
            if hit:
                ctx.count(f"skipped_files:decontaminated:{hit.benchmark}")
                ctx.removed.append({"path": path, "benchmark": hit.benchmark, "ngram": hit.ngram})
                continue
        seen.add(path)
        out.append((path, content))
    for reason, n in (record.get("_skipped_files") or {}).items():
        ctx.count(f"skipped_files:{reason}", n)
    return out


def last_line_start(text: str) -> int:
    """Start of the last line that begins with a non-whitespace character (0 if there is none)."""
    end = len(text)
    while True:
        k = text.rfind("\n", 0, end)
        if k < 0:
            return 0
        if k + 1 < len(text) and not text[k + 1].isspace():
            return k + 1
        end = k


class _EncodedFiles:
    """Each file's text encoded once, as it appears before another file (with the separating newline) and,
    on demand, as the last file of a document (without it).

    The two differ only at the end, so with tokenizers whose pre-tokenizer always breaks at a line start
    (`tokenizer.line_start_is_boundary`) each text is encoded as head + last line and only the last line is
    encoded twice; other tokenizers encode both variants in full.

    With a token `limit` (the room a single file has under --max-tokens), a file longer than
    CLIP_CHARS_PER_TOKEN x limit characters is encoded only up to a line start past that point: the ids
    of a text cut at a pre-token boundary are a prefix of the whole text's ids, so when that prefix alone
    exceeds the limit the file is known not to fit, and its truncation needs nothing beyond the prefix.
    Such files are `clipped[k]`; they can only be truncated (never FIM'd), and the tail is never encoded.
    """

    def __init__(self, tok, texts: list[str], limit: int | None = None):
        self.tok, self.texts = tok, texts
        n = len(texts)
        self.clipped = [False] * n
        if tok.line_start_is_boundary:
            self.cuts = [last_line_start(t) for t in texts]
            clip = [None] * n if limit is None else [_clip_point(t, limit, q) for t, q in zip(texts, self.cuts)]
            heads = [t[:c] if c is not None else t[:q] for t, q, c in zip(texts, self.cuts, clip)]
            tails = [t[q:] + "\n" for t, q, c in zip(texts, self.cuts, clip) if c is None]
            arrays = tok.encode_raw_batch_np(heads + tails)
            self.heads, tails_enc = arrays[:n], iter(arrays[n:])
            self.with_newline = []
            for k in range(n):
                if clip[k] is not None and self.heads[k].size > limit:
                    self.clipped[k] = True
                    self.with_newline.append(self.heads[k])
                    continue
                if clip[k] is not None:  # the prefix fits after all (very long tokens): encode the rest
                    rest = texts[k][clip[k]:self.cuts[k]] if clip[k] < self.cuts[k] else ""
                    self.heads[k] = np.concatenate([self.heads[k], tok.encode_raw_np(rest)])
                    tail = tok.encode_raw_np(texts[k][self.cuts[k]:] + "\n")
                else:
                    tail = next(tails_enc)
                self.with_newline.append(np.concatenate([self.heads[k], tail]))
        else:
            self.cuts = None
            self.with_newline = tok.encode_raw_batch_np([t + "\n" for t in texts])

    def last_plan(self, k: int) -> list:
        """File k as the last file of a document (no newline after it), as a plan for `resolve`."""
        if self.clipped[k]:
            return [self.heads[k]]
        if self.cuts is None:
            return [self.texts[k]]
        return [self.heads[k], self.texts[k][self.cuts[k]:]]

    def fim_plan(self, k: int, start: int, i: int, j: int) -> list[list]:
        """Plans (see `resolve`) for the ids of text[start:i], text[i:j], text[j:] of file k, each as if
        encoded on its own.

        Where possible the prefix and suffix reuse the file's encoding up to / from a line start (a
        pre-token boundary), found through the byte length of each id; the rest is text to encode. Every
        line start lies at or before the last one, so the head's ids (text up to the last line) suffice.
        """
        text = self.texts[k]
        nbytes = self.tok.token_nbytes
        if self.cuts is None or nbytes is None or not unicodedata.is_normalized("NFC", text):
            return [[text[start:i]], [text[i:j]], [text[j:]]]
        head, cut = self.heads[k], self.cuts[k]
        ends = np.cumsum(nbytes[head])  # byte offset after each token of text[:cut]

        def token_index(q: int) -> int | None:  # number of tokens covering text[:q], if q is a boundary
            b = len(text[:q].encode("utf-8"))
            n = int(np.searchsorted(ends, b, side="right"))
            return n if (ends[n - 1] if n else 0) == b else None

        s0 = start if start < len(text) and _line_start(text, start) else None
        q1 = _last_line_start_in(text, start + 1, i)
        a, b = (token_index(s0) if s0 is not None else None), (token_index(q1) if q1 is not None else None)
        prefix = [head[a:b], text[q1:i]] if a is not None and b is not None else [text[start:i]]
        q2 = _first_line_start_in(text, j, len(text))
        c = token_index(q2) if q2 is not None else None
        suffix = [text[j:q2], head[c:], text[cut:]] if c is not None else [text[j:]]
        return [prefix, [text[i:j]], suffix]

    def last(self, k: int) -> np.ndarray:
        return resolve(self.tok, [self.last_plan(k)])[0]

    def fim_parts(self, k: int, start: int, i: int, j: int) -> list[np.ndarray]:
        return resolve(self.tok, self.fim_plan(k, start, i, j))


def resolve(tok, plans: list[list]) -> list[np.ndarray]:
    """Each plan (a list of id arrays and texts) as one id array; all texts encoded in one batch call, so a
    repository's pieces cost one trip through the encoder rather than one per piece."""
    texts = [p for plan in plans for p in plan if isinstance(p, str)]
    tokens, offsets = tok.encode_raw_flat(texts) if texts else (None, None)
    out, t = [], 0
    for plan in plans:
        parts = []
        for p in plan:
            if isinstance(p, str):
                p, t = tokens[offsets[t]:offsets[t + 1]], t + 1
            parts.append(p)
        out.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return out


CLIP_CHARS_PER_TOKEN = 8  # code averages 3-4 characters per token; the margin makes re-encoding rare


def _clip_point(text: str, limit: int, last_line: int) -> int | None:
    """A line start past CLIP_CHARS_PER_TOKEN x limit characters, up to `last_line` (the last line's start),
    or None."""
    if len(text) <= CLIP_CHARS_PER_TOKEN * limit:
        return None
    q = _first_line_start_in(text, CLIP_CHARS_PER_TOKEN * limit, last_line)
    return q if q is not None and q <= last_line else None


def _line_start(text: str, q: int) -> bool:
    """A pre-token boundary under `line_start_is_boundary`: after a newline, before a non-space character."""
    return 0 < q < len(text) and text[q - 1] == "\n" and not text[q].isspace()


def _last_line_start_in(text: str, lo: int, hi: int) -> int | None:
    """The largest line start q with lo <= q <= hi, or None."""
    k = text.rfind("\n", 0, hi)  # a newline at k < hi gives q = k + 1 <= hi
    while k >= 0 and k + 1 >= lo:
        if _line_start(text, k + 1):
            return k + 1
        k = text.rfind("\n", 0, k)
    return None


def _first_line_start_in(text: str, lo: int, hi: int) -> int | None:
    """The smallest line start q with lo <= q <= hi, or None."""
    k = text.find("\n", max(lo - 1, 0), hi)
    while k >= 0:
        if _line_start(text, k + 1):
            return k + 1
        k = text.find("\n", k + 1, hi)
    return None


def _ids(x) -> np.ndarray:
    return np.asarray([x], dtype=np.int32)


@dataclass
class _Draft:
    """One document before its text pieces are encoded: its files, and its FIM cut (drawn in document order)."""

    group: list[int]
    fim: list[list] | None = None  # plans of the path line, prefix, middle, suffix

    def plans(self, enc: _EncodedFiles) -> list[list]:
        return self.fim if self.fim is not None else [enc.last_plan(self.group[-1])]


def _draft(files: list[tuple[str, str]], group: list[int], enc: _EncodedFiles, ctx: ModeContext) -> _Draft:
    draft = _Draft(group)
    path, content = files[group[-1]]
    if ctx.rng.random() < ctx.options.fim_rate and not enc.clipped[group[-1]]:
        i, j = fim_split_points(content, ctx.rng, ctx.options.fim_line_level)
        start = len(path) + 1  # the file's text is "{path}\n{content}"
        draft.fim = [[f"{path}\n"], *enc.fim_plan(group[-1], start, start + i, start + j)]
    return draft


def _pack_piece(header: list[np.ndarray], draft: _Draft, pieces: list[np.ndarray], enc: _EncodedFiles,
                ids: ControlIds, ctx: ModeContext, budget: int | None) -> list[np.ndarray]:
    """Token arrays of one document: header, the group's files (last one maybe FIM'd or truncated), EOD.
    `pieces` are the draft's resolved plans."""
    sep, eod = _ids(ids.file_sep), _ids(ids.eod)
    group = draft.group
    body = [a for k in group[:-1] for a in (sep, enc.with_newline[k])]
    fixed = sum(a.size for a in header) + sum(a.size for a in body) + 1  # + EOD
    if draft.fim is not None:
        path_line, prefix, middle, suffix = pieces
        last = [sep, path_line, _ids(ids.fim_prefix), prefix, _ids(ids.fim_suffix), suffix, _ids(ids.fim_middle),
                middle]
        if budget is None or fixed + sum(a.size for a in last) <= budget:
            ctx.count("fim_documents")
            return [*header, *body, *last, eod]
        pieces = [enc.last(group[-1])]  # FIM does not fit: the plain last file, maybe truncated
    last_text = pieces[0]
    room = None if budget is None else budget - fixed - 1
    if room is not None and last_text.size > room:
        ctx.count("truncated_files")
        last_text = last_text[: max(room, 0)]
    return [*header, *body, sep, last_text, eod]


def repo(record: dict, ctx: ModeContext) -> list[Document]:
    """A repository -> one or more repo-level documents (split at file boundaries under --max-tokens)."""
    name = record.get("name", record.get("repo_name"))
    if not isinstance(name, str) or not name:
        raise SkipRecord("missing field 'name'")
    files = usable_files(record, ctx)
    if not files:
        raise SkipRecord("no usable files")
    ids = ctx.resources.get("ids") or ControlIds.of(ctx.tokenizer, repo=True)
    files = [files[k] for k in file_order(files, ctx.options.repo_file_order, ctx.rng)]
    tok = ctx.tokenizer
    header = [_ids(ids.repo_name), tok.encode_raw_np(f"{name}\n")]
    budget = ctx.options.max_tokens
    room = None if budget is None else budget - sum(a.size for a in header) - 1
    if room is not None and room < 2:
        raise SkipRecord(f"--max-tokens {budget} leaves no room after the repository header")
    encoded = _EncodedFiles(tok, [repo_file_text(p, c, last=True) for p, c in files], room)
    if room is not None:
        groups = greedy_pack([1 + e.size for e in encoded.with_newline], room)
    else:
        groups = [list(range(len(files)))]
    if len(groups) > 1:
        ctx.count("split_repositories")
    drafts = [_draft(files, g, encoded, ctx) for g in groups]  # every random draw first, in document order
    plans = [d.plans(encoded) for d in drafts]
    resolved = resolve(tok, [p for ps in plans for p in ps])  # then one encoder call for all their texts
    docs, at = [], 0
    for draft, ps in zip(drafts, plans):
        pieces, at = resolved[at:at + len(ps)], at + len(ps)
        docs.append(Document([Piece(a) for a in _pack_piece(header, draft, pieces, encoded, ids, ctx, budget)]))
    ctx.count("repo_files", len(files))
    return docs


def read_repo_dirs(options: argparse.Namespace):
    """Each --input-dir directory as one repo record (hidden entries skipped; binary/non-UTF-8 files counted)."""
    for root in options.input_dir:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--input-dir {root} is not a directory")
        files, skipped = [], Counter()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                full = Path(dirpath) / fname
                if fname.startswith(".") or full.is_symlink() or not full.is_file():
                    continue
                data = full.read_bytes()
                if b"\x00" in data[:BINARY_SNIFF_BYTES]:
                    skipped["binary"] += 1
                    continue
                try:
                    content = data.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["non-UTF-8"] += 1
                    continue
                files.append({"path": full.relative_to(root).as_posix(), "content": content})
        yield str(root), {"name": root.resolve().name, "files": files, "_skipped_files": dict(skipped)}


def add_repo_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("repo")
    g.add_argument("--input-dir", nargs="+", default=None,
                   help="repository directories (each one repository) instead of --input JSONL")
    g.add_argument("--repo-file-order", choices=("random", "dependency"), default="dependency",
                   help="file order inside a repository document")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="split repositories longer than this at file boundaries (header repeated)")


def prepare_repo(options: argparse.Namespace, tokenizer, sample_records) -> dict:
    return {"ids": ControlIds.of(tokenizer, repo=True)}


register_mode("repo", repo, required_tokens=(EOD_TOKEN, *FIM_TOKENS, *REPO_TOKENS),
              add_arguments=add_repo_arguments, prepare=prepare_repo, decontam_self=True,
              read_records=lambda options: read_repo_dirs(options) if options.input_dir else None)
