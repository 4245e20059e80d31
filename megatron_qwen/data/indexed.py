"""Write Megatron indexed datasets (`.bin` + `.idx`) in bulk, under temporary names until complete.

Why it exists: megatron-core's `IndexedDatasetBuilder` takes one document at a time as Python lists and
writes straight to the final file name. The preprocessor produces numpy arrays for thousands of
documents at once, and an interrupted run must never leave a dataset under its final name. This writer
appends whole chunks, writes the index in the layout `megatron.core.datasets.indexed_dataset` reads
(header `MMIDIDX\\0\\0`, version 1, dtype code, counts, int32 sequence lengths, int64 byte pointers,
int64 document indices starting at 0), and renames `.bin` then `.idx` into place only on `commit()`.
The `.idx` is the commit marker: a stale `.idx` is removed before the new `.bin` is renamed, so no
reader ever pairs an index with the wrong data.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
# The dtype codes of megatron.core.datasets.indexed_dataset.DType (part of the file format).
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8}


def token_dtype(vocab_size: int) -> type[np.number]:
    """Megatron's choice: uint16 when every id fits below 65500, int32 otherwise."""
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedWriter:
    """Accumulates sequences and document boundaries; files appear under `prefix.{bin,idx}` at commit."""

    def __init__(self, prefix: str | Path, dtype: type[np.number]):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        suffix = f".tmp-{os.getpid()}"
        self.tmp_bin = f"{self.prefix}.bin{suffix}"
        self.tmp_idx = f"{self.prefix}.idx{suffix}"
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self.tmp_bin, "wb")
        self._lengths: list[np.ndarray] = []
        self._doc_seq_counts: list[np.ndarray] = []
        self.tokens = 0

    def add(self, tokens: np.ndarray, sequence_lengths: np.ndarray, doc_sequence_counts: np.ndarray) -> None:
        """Append a chunk: all tokens, the length of each sequence, the number of sequences per document."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < np.iinfo(self.dtype).min or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"{self.prefix}: token ids out of range for {self.dtype}")
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(np.asarray(sequence_lengths, dtype=np.int32))
        self._doc_seq_counts.append(np.asarray(doc_sequence_counts, dtype=np.int64))
        self.tokens += int(tokens.size)

    def add_document(self, tokens: np.ndarray, sequence_lengths: list[int] | None = None) -> None:
        """Append one document (one sequence unless `sequence_lengths` splits it)."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(sequence_lengths if sequence_lengths is not None else [tokens.size])
        self.add(tokens, lengths, np.asarray([lengths.size]))

    def _write_index(self) -> None:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        counts = np.concatenate(self._doc_seq_counts) if self._doc_seq_counts else np.zeros(0, np.int64)
        pointers = np.zeros(lengths.size, dtype=np.int64)
        if lengths.size:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_index = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=doc_index[1:])
        with open(self.tmp_idx, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", DTYPE_CODES[self.dtype.type]))
            f.write(struct.pack("<Q", lengths.size))
            f.write(struct.pack("<Q", doc_index.size))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_index.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        """Flush data and write the index, still under temporary names."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._write_index()

    def commit(self) -> None:
        """Move both files to their final names (index last: it marks the dataset complete)."""
        final_idx = f"{self.prefix}.idx"
        if os.path.exists(final_idx):
            os.remove(final_idx)
        os.replace(self.tmp_bin, f"{self.prefix}.bin")
        os.replace(self.tmp_idx, final_idx)

    def abort(self) -> None:
        """Remove the temporary files (after an error or an interrupt)."""
        if not self._bin.closed:
            self._bin.close()
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)


def write_atomic_text(path: str | Path, text: str) -> None:
    """Write a small text file (a report, a config) under a temporary name, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_documents(prefix: str | Path) -> list[np.ndarray]:
    """Every document of a dataset, read back through megatron-core's own `IndexedDataset` (sequences joined)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    bounds = ds.document_indices
    docs = []
    for d in range(len(bounds) - 1):
        seqs = [ds[s] for s in range(bounds[d], bounds[d + 1])]
        docs.append(np.concatenate(seqs) if seqs else np.zeros(0, ds.index.dtype))
    return docs
