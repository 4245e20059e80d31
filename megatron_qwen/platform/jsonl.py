"""One JSONL reader: each non-blank line of a file (or `.gz` file) as a JSON object, with its line number.

Why it exists: the benchmark readers, `synth` and the AST-FIM mixer all read JSONL inputs and differ only in
what a bad line means to them (stop with `file:line`, or count it and go on); the reading itself is this.
The preprocessing pipeline has its own block reader (orjson, bounded memory, per-reason counts).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A line that is not a JSON object; `str()` is `file:line: reason`, `kind` the reason without detail."""

    def __init__(self, path: str | Path, line: int, kind: str, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.kind = str(path), line, kind


def iter_jsonl(path: str | Path,
               on_bad: Callable[[JsonlError], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. A bad line raises JsonlError, or, with `on_bad`, is
    handed to it and skipped (kinds: "malformed JSON", "non-UTF-8 bytes", "expected a JSON object"). A file
    that cannot be opened raises OSError; one that breaks off while read (a damaged .gz), JsonlError."""
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:  # OSError: the caller's
        line_no = 0
        try:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    error = None if isinstance(obj, dict) else JsonlError(
                        path, line_no, "expected a JSON object", f"expected a JSON object, got {type(obj).__name__}")
                except UnicodeDecodeError as e:
                    error = JsonlError(path, line_no, "non-UTF-8 bytes", f"non-UTF-8 bytes ({e.reason} at byte {e.start})")
                except json.JSONDecodeError as e:
                    error = JsonlError(path, line_no, "malformed JSON", f"malformed JSON: {e.msg} (column {e.colno})")
                if error is None:
                    yield line_no, obj
                elif on_bad is None:
                    raise error
                else:
                    on_bad(error)
        except (OSError, EOFError) as e:  # a damaged or truncated .gz
            raise JsonlError(path, line_no + 1, "unreadable", f"cannot decode: {e}") from None
