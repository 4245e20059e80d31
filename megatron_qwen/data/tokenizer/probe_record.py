"""The reference encoder's answers to the exactness probes, recorded once per tokenizer.

Why it exists: a fast encoder is used only after it matches the Hugging Face `tokenizers` pipeline on a
probe set (`fast_encoder.choose_encoder`), and building that pipeline costs about 0.3 s of every start,
more than the whole work of a small run. Its answers depend only on the tokenizer spec, the probe texts
and the `tokenizers` version, so they are recorded under a SHA-256 of exactly those and read back by later
runs. The fast encoder is still run on every probe at every start and compared with these answers; a
record that cannot be read counts as absent. The place is `$MEGATRON_QWEN_CACHE_DIR/probes` (default
`~/.cache/megatron_qwen/probes`); where it cannot be written, runs only lose the time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def record_dir() -> Path:
    root = os.environ.get("MEGATRON_QWEN_CACHE_DIR") or Path.home() / ".cache" / "megatron_qwen"
    return Path(root) / "probes"


def _path(spec_json: str, probes: Sequence[str]) -> Path:
    h = hashlib.sha256(f"tokenizers {version('tokenizers')}\0".encode())
    h.update(spec_json.encode("utf-8"))
    for text in probes:
        h.update(b"\0" + text.encode("utf-8", "surrogatepass"))
    return record_dir() / f"{h.hexdigest()}.json"


def load(spec_json: str, probes: Sequence[str]) -> list[np.ndarray] | None:
    """The recorded answers for these probes (one int32 array each), or None."""
    path = _path(spec_json, probes)
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))["ids"]
        if len(answers) != len(probes):
            raise ValueError(f"{len(answers)} answers for {len(probes)} probes")
        return [np.asarray(a, dtype=np.int32) for a in answers]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.info("ignoring the probe record %s: %s", path, e)
        return None


def save(spec_json: str, probes: Sequence[str], answers: Sequence[np.ndarray]) -> None:
    """Record the answers (atomically: a reader sees the whole file or none)."""
    path, tmp = _path(spec_json, probes), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
            tmp = f.name
            json.dump({"ids": [a.tolist() for a in answers]}, f)
        os.replace(tmp, path)
    except OSError as e:
        log.info("could not record the probe answers in %s: %s", path.parent, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
