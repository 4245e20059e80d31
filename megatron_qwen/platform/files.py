"""Files that appear complete or not at all: write under a temporary name in the same directory, then rename.

`os.replace` within one directory is atomic on POSIX file systems, so a reader (or a crash) never sees a
half-written file; on failure the temporary file is removed and the previous version, if any, stays.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, content: str | bytes | Iterable[str], mode: int | None = None) -> Path:
    """Write text, bytes or an iterable of text chunks (UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(content)
        if mode is not None:
            tmp.chmod(mode)
    return Path(path)
