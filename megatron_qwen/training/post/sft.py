"""SFT samples for the training loop: a weighted blend of packed conversation datasets, AST-FIM share included.

Why it exists: stage 3's SFT trains on conversations with the loss on the assistant turns only (the loss
mask stored by `tools/preprocess_data.py --mode sft`). `data.packing.PackedSFTDataset` packs whole
conversations into `seq_length` positions (never splitting one); this module blends several such datasets
(`data.blend`, Megatron's `[weight, prefix, ...]` or a list of prefixes), mixes in an `--mode sft-fim`
dataset at an exact share of the samples (`post.sft.fim_share`), and turns samples into micro-batches:

- `data.packed_sequences=true`: one packed sample per micro-batch, a THD row [1, seq_length] with
  `cu_seqlens` and megatron's `PackedSeqParams` (block-diagonal causal attention, RoPE restarting per
  conversation). `train.micro_batch_size` must be 1 then — the packing fills the row instead — so the
  pipeline's activation shape (seq_length, micro_batch_size) stays exact.
- otherwise: one conversation per row, padded, [B, seq_length] under the ordinary causal mask.

The loss function is the pretraining one (`step.forward_step`: masked per-token sum / token count), so a
global batch's loss is the mean over all its answer tokens on every layout.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_qwen.config import Config
from megatron_qwen.data.packing import PackedSFTDataset, collate_packed, stack_samples
from megatron_qwen.model.context_parallel import packed_seq_params


def parse_blend(blend: list | None) -> list[tuple[float, str]]:
    """Megatron's blend list -> [(weight, prefix)]: `[w1, p1, w2, p2, ...]` or `[p1, p2, ...]` (equal weights)."""
    if not blend:
        return []
    items = [str(x) for x in blend]
    try:
        weights = [float(x) for x in items[0::2]]
    except ValueError:
        return [(1.0, p) for p in items]
    if len(items) % 2:
        raise ValueError(f"data.blend {blend}: weights and prefixes must alternate")
    return list(zip(weights, items[1::2]))


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
            batch = collate_packed(samples)
            batch["packed_seq_params"] = packed_seq_params(batch["cu_seqlens"])
            batch["attention_mask"] = None
        else:
            batch = stack_samples(samples)
            batch["attention_mask"] = torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool).triu(1)
        batch["tokens"] = batch["tokens"].long()
        batch["labels"] = batch["labels"].long()
        batch["loss_mask"] = batch["loss_mask"].float()
        batch["position_ids"] = batch["position_ids"].long()
        return batch


def _dataset(cfg: Config, prefix: str) -> PackedSFTDataset:
    from megatron.core import parallel_state

    cp = parallel_state.get_context_parallel_world_size() if parallel_state.is_initialized() else 1
    pad = cfg.post.pad_token_id if cfg.post.pad_token_id is not None else cfg.data.eod_token_id
    return PackedSFTDataset(dataset_prefix(prefix), cfg.data.seq_length, pad, pack=cfg.data.packed_sequences,
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
