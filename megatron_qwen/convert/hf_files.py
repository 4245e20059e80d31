"""Streaming access to HF weight files: read row ranges of tensors, write sharded safetensors.

The reader parses safetensors headers itself and copies the requested rows straight from the file into
the destination tensor (`readinto`, no mmap): memory holds only what the caller asked for, and pages of
the file never count against the process. The writer lays out every shard's header up front, so each
tensor is written once, as soon as it is ready, and dropped. Pickled `pytorch_model*.bin` files are
refused unless the caller opts in; then they are opened with `torch.load(weights_only=True, mmap=True)`.
Every error names the file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


class WeightFileError(ValueError):
    """A weight file that cannot be read as asked; the message names the file and tensor."""


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """{name: TensorInfo} and the `__metadata__` of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WeightFileError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise WeightFileError(f"{path}: header length {n} is implausible; not a safetensors file?")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightFileError(f"{path}: header is not valid JSON ({e})") from e
    size = path.stat().st_size
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, entry in header.items():
        if entry["dtype"] not in DTYPES:
            raise WeightFileError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * dtype.itemsize or 8 + n + end > size:
            raise WeightFileError(f"{path}: tensor {name} has inconsistent data_offsets {entry['data_offsets']}")
        out[name] = TensorInfo(path, dtype, shape, 8 + n + begin)
    return out, meta


class SafetensorsReader:
    """All `*.safetensors` files of an HF directory (through the index when there is one)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightFileError(f"{index}: not a valid safetensors index ({e})") from e
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise WeightFileError(f"{self.dir}: no *.safetensors files")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = self.dir / name
            if not path.is_file():
                raise WeightFileError(f"{path}: listed in the index but missing")
            infos, _ = read_safetensors_header(path)
            for key, info in infos.items():
                if key in self.tensors:
                    raise WeightFileError(f"tensor {key} appears in both {self.tensors[key].file} and {path}")
                self.tensors[key] = info
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise WeightFileError(f"{self.dir}: tensor {name} not found in any safetensors file")
        return self.tensors[name]

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = open(path, "rb", buffering=0)
        return self._handles[path]

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor, cols: slice | None = None) -> None:
        """Rows [start, stop) (optionally only columns `cols`) of tensor `name` into `out` (cast if needed)."""
        info = self.info(name)
        row_elems = 1
        for s in info.shape[1:]:
            row_elems *= s
        if not (0 <= start <= stop <= (info.shape[0] if info.shape else 1)):
            raise WeightFileError(f"{info.file}: rows [{start}, {stop}) out of range for {name} {list(info.shape)}")
        direct = cols is None and out.dtype == info.dtype and out.is_contiguous()
        buf = out if direct else torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
        nbytes = (stop - start) * row_elems * info.dtype.itemsize
        if buf.numel() * buf.element_size() != nbytes:
            raise WeightFileError(f"{info.file}: {name} rows [{start}, {stop}) do not fit a tensor of shape {list(out.shape)}")
        view = memoryview(buf.view(-1).view(torch.uint8).numpy()) if nbytes else memoryview(b"")
        f = self._handle(info.file)
        f.seek(info.offset + start * row_elems * info.dtype.itemsize)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise WeightFileError(f"{info.file}: unexpected end of file reading {name}")
            got += n
        if not direct:
            out.copy_(buf if cols is None else buf[:, cols])

    def read(self, name: str) -> torch.Tensor:
        info = self.info(name)
        out = torch.empty(info.shape, dtype=info.dtype)
        self.read_rows(name, 0, info.shape[0] if info.shape else 1, out.view(-1) if not info.shape else out)
        return out

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


class PickleReader:
    """`pytorch_model*.bin` files, opened with weights_only=True and mmap (only when the user opts in)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / "pytorch_model.bin.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.dir.glob("pytorch_model*.bin"))
        if not files:
            raise WeightFileError(f"{self.dir}: no pytorch_model*.bin files")
        self._files = [self.dir / f for f in files]
        self.tensors: dict[str, TensorInfo] = {}
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        for path in self._files:
            for key, t in self._load(path).items():
                self.tensors[key] = TensorInfo(path, t.dtype, tuple(t.shape), 0)

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._loaded:
            try:
                self._loaded[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - report which file failed and why
                raise WeightFileError(f"{path}: cannot load with weights_only=True ({e})") from e
        return self._loaded[path]

    names = SafetensorsReader.names
    info = SafetensorsReader.info

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor, cols: slice | None = None) -> None:
        t = self._load(self.info(name).file)[name][start:stop]
        out.copy_(t if cols is None else t[:, cols])

    def read(self, name: str) -> torch.Tensor:
        return self._load(self.info(name).file)[name].clone()

    def close(self) -> None:
        self._loaded.clear()


def open_hf_weights(hf_dir: str | Path, allow_pickle: bool = False):
    """A reader for the weights in `hf_dir`: safetensors, or pickles only with `allow_pickle`."""
    hf_dir = Path(hf_dir)
    if any(hf_dir.glob("*.safetensors")):
        return SafetensorsReader(hf_dir)
    if any(hf_dir.glob("pytorch_model*.bin")):
        if not allow_pickle:
            raise WeightFileError(
                f"{hf_dir}: only pickled pytorch_model*.bin weights found; pickles can run code when loaded. "
                "Convert them to safetensors, or pass --allow-pickle to load them with torch.load(weights_only=True)"
            )
        return PickleReader(hf_dir)
    raise WeightFileError(f"{hf_dir}: no *.safetensors (or pytorch_model*.bin) weight files")


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


def plan_shards(tensors: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Consecutive tensors grouped into shards of at most max_shard_bytes (a larger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class ShardedSafetensorsWriter:
    """Writes `model-0000x-of-0000y.safetensors` plus the index, one tensor at a time, in plan order.

    Files are written as `<name>.partial`, fsynced and renamed when complete; `close()` writes the index.
    """

    def __init__(self, out_dir: str | Path, tensors: list[PlannedTensor], max_shard_bytes: int = 5 * 10**9):
        self.dir = Path(out_dir)
        self.shards = plan_shards(tensors, max_shard_bytes)
        n = len(self.shards)
        self.file_names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._file = None
        self._shard = -1
        self.total_bytes = sum(t.nbytes for t in tensors)

    def _open(self, shard: int) -> None:
        self._finish_file()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[shard]:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._path = self.dir / self.file_names[shard]
        self._file = open(str(self._path) + ".partial", "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = shard

    def _finish_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(str(self._path) + ".partial", self._path)
            self._file = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, planned = self._order[self._next]
        if name != planned.name:
            raise WeightFileError(f"{self.dir}: expected tensor {planned.name} next, got {name}")
        if tensor.dtype != planned.dtype or tuple(tensor.shape) != planned.shape:
            raise WeightFileError(
                f"{self.dir}: tensor {name} is {tensor.dtype} {list(tensor.shape)}, planned {planned.dtype} {list(planned.shape)}"
            )
        if shard != self._shard:
            self._open(shard)
        data = tensor.detach().contiguous().view(-1)
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> dict:
        """Finish the last file and write the index; returns the index dict."""
        if self._next != len(self._order):
            raise WeightFileError(f"{self.dir}: only {self._next} of {len(self._order)} tensors were written")
        self._finish_file()
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": {t.name: self.file_names[i] for i, t in self._order},
        }
        tmp = self.dir / "model.safetensors.index.json.partial"
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, self.dir / "model.safetensors.index.json")
        return index
