"""What a complete checkpoint holds, recorded when it is complete and checked before it is loaded.

`manifest.json` in a checkpoint directory lists every file (relative path) with its size and CRC-32.
CRC-32 (zlib, over 16 MiB blocks) reads at about 1-2 GB/s per core and catches what disks and copies do
to files: truncation, lost blocks, flipped bits; it is not a defence against deliberate tampering. The
work is split across ranks (file i goes to rank i mod world), so a large checkpoint costs each rank only
its share. A checkpoint without a manifest was written by an older version: it is loaded with a warning.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from megatron_qwen.platform.files import write_atomic

MANIFEST = "manifest.json"
BLOCK = 16 << 20


def crc32(path: Path, flush: bool = False) -> str:
    """The file's CRC-32 (hex); with `flush`, its data is also forced to disk (fsync) first."""
    value = 0
    with open(path, "rb") as f:
        if flush:
            os.fsync(f.fileno())
        while block := f.read(BLOCK):
            value = zlib.crc32(block, value)
    return f"{value:08x}"


def checkpoint_files(directory: Path) -> list[str]:
    """Every file under `directory` but the manifest, as sorted relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def describe(directory: str | Path, rank: int = 0, world: int = 1, flush: bool = False) -> dict[str, dict]:
    """{relative path: {size, crc32}} for this rank's share of the files (fsynced first with `flush`)."""
    directory = Path(directory)
    return {name: {"size": (directory / name).stat().st_size, "crc32": crc32(directory / name, flush)}
            for i, name in enumerate(checkpoint_files(directory)) if i % world == rank}


def write_manifest(directory: str | Path, entries: dict[str, dict]) -> None:
    write_atomic(Path(directory) / MANIFEST, json.dumps({"files": dict(sorted(entries.items()))}, indent=1) + "\n")


def read_manifest(directory: str | Path) -> dict[str, dict] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text())["files"] if path.is_file() else None


def problems(directory: str | Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with this rank's share of a checkpoint (empty: intact, or no manifest to check)."""
    directory = Path(directory)
    expected = read_manifest(directory)
    if expected is None:
        return []
    found: list[str] = []
    if rank == 0:
        extra = sorted(set(checkpoint_files(directory)) - set(expected))
        found += [f"{name}: not in the manifest" for name in extra]
    for i, (name, want) in enumerate(sorted(expected.items())):
        if i % world != rank:
            continue
        path = directory / name
        if not path.is_file():
            found.append(f"{name}: missing")
        elif path.stat().st_size != want["size"]:
            found.append(f"{name}: {path.stat().st_size} bytes, {want['size']} recorded (truncated or grown)")
        elif crc32(path) != want["crc32"]:
            found.append(f"{name}: CRC-32 {crc32(path)}, {want['crc32']} recorded (damaged contents)")
    return found
