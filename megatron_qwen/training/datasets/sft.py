"""SFT samples at run time: packed conversation datasets, blended, with an exact AST-FIM share.

Why it exists: fine-tuning data is many short conversations; padding each to the stage's length wastes
most of the compute. `PackedSFTDataset` packs several whole conversations (`--mode sft` / `sft-fim`
files: `{prefix}_text_document` + `{prefix}_loss_mask_document`, one conversation per document) into one
row of `seq_length` positions with `cu_seqlens` boundaries (`packing.py`), so attention is block-diagonal
and no conversation attends to another; a conversation is never split. Rows are shuffled with `seed`;
`pack=False` gives one conversation per row, padded.

`SFTSource` blends several such datasets (`data.blend`), mixes in an `--mode sft-fim` dataset at an exact
share of the samples (`post.sft.fim_share`), and collates micro-batches: one packed THD row
(`data.packed_sequences=true`, `train.micro_batch_size=1`) or padded [B, seq_length] rows.
"""

from __future__ import annotations

import logging

import numpy as np

from megatron_qwen.config import Config
from megatron_qwen.model.batch import finalize
from megatron_qwen.training.datasets.blend import parse_blend
from megatron_qwen.training.datasets.packing import build_sample, collate_packed, pack_bins, stack_samples

log = logging.getLogger(__name__)

OVERLONG = ("error", "truncate", "drop")


class PackedSFTDataset:
    """Packed (or padded) SFT samples over `{prefix}_text_document` + `{prefix}_loss_mask_document`.

    `seq_length` is the stage's sequence length; a conversation needs at most seq_length + 1 tokens.
    Longer ones: `overlong="error"` (default: preprocess with `--sft-seq-length` instead), `"truncate"`
    (keep the first seq_length + 1 tokens) or `"drop"`; both counted in `stats`. `multiple`: pad every
    conversation's segment to a multiple of it (2 x context_parallel_size under context parallelism).
    """

    def __init__(self, prefix: str, seq_length: int, pad_id: int, *, pack: bool = True, shuffle: bool = True,
                 seed: int = 1234, overlong: str = "error", multiple: int = 1):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
        if multiple < 1 or seq_length % multiple:
            raise ValueError(f"seq_length {seq_length} must be a multiple of multiple={multiple} (2 x CP size)")
        self.seq_length, self.pad_id, self.overlong, self.multiple = seq_length, pad_id, overlong, multiple
        self.tokens = IndexedDataset(f"{prefix}_text_document")
        self.masks = IndexedDataset(f"{prefix}_loss_mask_document")
        self._check_alignment(prefix)
        positions = self.tokens.sequence_lengths.astype(np.int64) - 1
        too_long = positions > seq_length
        self.stats = {"conversations": int(positions.size), "too_short": int((positions < 1).sum()),
                      "overlong": int(too_long.sum()), "overlong_policy": overlong}
        if too_long.any() and overlong == "error":
            i = int(np.flatnonzero(too_long)[0])
            raise ValueError(
                f"{prefix}_text_document: conversation {i} has {positions[i] + 1} tokens, more than seq_length + 1 = "
                f"{seq_length + 1} ({self.stats['overlong']} such); preprocess with --sft-seq-length {seq_length}, "
                "or pass overlong='truncate' or 'drop'")
        if overlong == "truncate":
            positions = np.minimum(positions, seq_length)
        keep = np.flatnonzero((positions >= 1) & (positions <= seq_length))
        widths = -(-positions[keep] // multiple) * multiple
        groups = pack_bins(widths, seq_length) if pack else [[k] for k in range(keep.size)]
        self.samples = [keep[g].tolist() for g in groups]
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self.samples))
            self.samples = [self.samples[i] for i in order]
        used = int(positions[keep].sum())
        self.stats.update(samples=len(self.samples), kept=int(keep.size),
                          padding_fraction=1 - used / max(1, len(self.samples) * seq_length))
        log.info("%s: %s", prefix, self.stats)

    def _check_alignment(self, prefix: str) -> None:
        t, m = self.tokens, self.masks
        if len(t.document_indices) != len(t) + 1:
            raise ValueError(f"{prefix}_text_document has documents of several sequences; SFT data has one "
                             "conversation per document (is this DPO data? use preference.PreferenceDataset)")
        if not np.array_equal(t.sequence_lengths, m.sequence_lengths):
            raise ValueError(f"{prefix}_loss_mask_document does not match {prefix}_text_document "
                             f"({len(m)} vs {len(t)} sequences, or different lengths)")

    def __len__(self) -> int:
        return len(self.samples)

    def conversation(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Conversation i (token ids, loss mask), truncated to seq_length + 1 tokens."""
        n = min(int(self.tokens.sequence_lengths[i]), self.seq_length + 1)
        return self.tokens.get(i, 0, n), self.masks.get(i, 0, n)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return build_sample([self.conversation(i) for i in self.samples[idx]], self.seq_length, self.pad_id,
                            self.multiple)


def pad_id(cfg: Config) -> int:
    """Padding id of post-training rows: post.pad_token_id, else the end-of-document id."""
    return cfg.post.pad_token_id if cfg.post.pad_token_id is not None else cfg.data.eod_token_id


def dataset_prefix(path: str) -> str:
    """A post-training dataset's prefix; a Megatron-style `{prefix}_text_document` entry is accepted too."""
    path = str(path)
    return path[: -len("_text_document")] if path.endswith("_text_document") else path


def blend_schedule(weights: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset, sample-within-dataset) for global indices 0..size-1, weights met as closely as possible.

    Dataset d's n-th sample is due at time (n + 1) / w_d; merging all datasets' samples by due time gives
    a schedule whose every prefix has the blend's shares to within one sample per dataset.
    """
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"blend weights must be >= 0 and not all 0, got {weights}")
    w = w / w.sum()
    due, which, within = [], [], []
    for d, wd in enumerate(w):
        if wd == 0:
            continue
        n = int(np.ceil(wd * size)) + 1
        due.append((np.arange(n) + 1) / wd)
        which.append(np.full(n, d))
        within.append(np.arange(n))
    order = np.argsort(np.concatenate(due), kind="stable")[:size]
    return np.concatenate(which)[order], np.concatenate(within)[order]


class SFTSource:
    """Samples by global index (the loop's contract) over a blend of PackedSFTDatasets; `collate` builds batches."""

    def __init__(self, datasets: list[PackedSFTDataset], weights: list[float], size: int, packed: bool):
        if not datasets:
            raise ValueError("SFT needs at least one dataset in data.blend")
        for d, ds in zip(weights, datasets):
            if len(ds) == 0:
                raise ValueError(f"an SFT dataset of the blend (weight {d}) has no samples")
        self.datasets, self.packed, self.size = datasets, packed, max(size, 1)
        self.which, self.within = blend_schedule(weights, self.size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        d = int(self.which[index])
        ds = self.datasets[d]
        return ds[int(self.within[index]) % len(ds)]

    def collate(self, samples: list[dict], seq_length: int) -> dict:
        """Samples -> one micro-batch (see the module doc); CP sharding is the loop's next step."""
        if self.packed:
            return finalize(collate_packed(samples))
        return finalize(stack_samples(samples), seq_length)


def _dataset(cfg: Config, prefix: str) -> PackedSFTDataset:
    from megatron.core import parallel_state

    cp = parallel_state.get_context_parallel_world_size() if parallel_state.is_initialized() else 1
    return PackedSFTDataset(dataset_prefix(prefix), cfg.data.seq_length, pad_id(cfg), pack=cfg.data.packed_sequences,
                            shuffle=cfg.post.shuffle, seed=cfg.seed, overlong=cfg.post.sft.overlong,
                            multiple=2 * cp if cp > 1 else 1)


def build_sft_sources(cfg: Config, train_samples: int, eval_samples: int) -> tuple[SFTSource, SFTSource | None]:
    """(train, validation) SFT sources: `data.blend` plus the AST-FIM dataset at `post.sft.fim_share`."""
    blend = parse_blend(cfg.data.blend)
    datasets = [_dataset(cfg, p) for _, p in blend]
    weights = [w for w, _ in blend]
    s = cfg.post.sft
    if s.fim_prefix and s.fim_share > 0:
        total = sum(weights)
        weights = [w / total * (1 - s.fim_share) for w in weights] + [s.fim_share]
        datasets.append(_dataset(cfg, s.fim_prefix))
    train = SFTSource(datasets, weights, train_samples, cfg.data.packed_sequences)
    valid = None
    if s.valid_prefix:
        v = _dataset(cfg, s.valid_prefix)
        valid = SFTSource([v], [1.0], max(eval_samples, len(v)), cfg.data.packed_sequences)
    return train, valid
