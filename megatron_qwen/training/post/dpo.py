"""Offline DPO on megatron's schedules: paired micro-batches, a precomputed frozen reference, exact averaging.

Why it exists: DPO compares each pair's chosen and rejected answers, so both must reach the same loss
function call. The pieces:

- `PairRows`: the loop addresses samples by a global index; for DPO index j is one *sequence*: pair
  j // 2, chosen if j is even, rejected if odd. `train.micro_batch_size` and `train.global_batch_size`
  therefore count sequences (two per pair; both must be even), a micro-batch of B pairs is the [2B, S]
  block of `data.preference.collate_pairs` (chosen rows first), and the pipeline's activation shape
  (seq_length, micro_batch_size) is exact with no change to the loop.
- Packed (`data.packed_sequences=true`): index j is one packed THD row [1, seq_length] holding several
  whole pairs, each sequence its own `cu_seqlens` segment (`data.preference.pack_pair_rows` /
  `collate_packed_pairs`); the rows are built once from the shuffled pair order, the same on every rank.
  `train.micro_batch_size` is 1 and `train.global_batch_size` counts rows; the loss sums log-probs per
  segment (`sequence_ids`) rather than per row (`pair_logps`), and the rest is the padded path's.
- Every pair must fit: one sequence of <= seq_length + 1 tokens (padded) or both together in seq_length
  positions (packed); otherwise the source refuses the dataset, counting the pairs that do not fit.
- The reference model is the stage's starting weights (`checkpoint.init_path`, the SFT result). Its
  response log-probs are computed once, forward-only, at the start of the stage: by the policy itself
  before its first update (it *is* the reference then — no second model in memory), or, when a run
  resumes without the cache, by a model loaded from `init_path`. Data-parallel ranks split the pairs,
  the table [pairs, 2] is all-reduced and kept in memory and in `post.dpo.reference_cache`
  (default `checkpoint.dir/reference_logps.pt`).
- `dpo_forward_step`: GPTModel given labels returns the per-token loss, i.e. −log p of every label
  (under TP: −vocab_parallel_cross_entropy, already complete on every TP rank); the loss function sums
  it over the answer tokens (the loss mask) of each sequence and calls `training.dpo_loss.dpo_loss`.
- Averaging: the loss function returns (DPO loss × pairs in the micro-batch, pairs, report). step.py's
  per-token contract divides the summed gradients by the pairs of the whole global batch (over
  micro-batches and data-parallel ranks), so the step minimizes the mean over all pairs of the global
  batch — the same number on every layout. The "lm loss" report is (loss sum, pairs), so the loop's
  logged `loss` is that mean; the DPO metrics (rewards, accuracy, log-probs) travel the same way in a
  side channel `pop_metrics()` reads at log time (the loop's StepResult carries only the loss).
  Context parallelism is not supported here (sequence sums would need a CP all-reduce).
- Held-out pairs (`post.dpo.valid_prefix`) get their own reference table (cache `reference_logps_val.pt`)
  and a PairRows whose batches say `metrics_scope="val"`: the loop's evaluation logs `val_loss` (the mean
  DPO loss) and `val/rewards/...` from `pop_metrics("val")`, apart from the training metrics.
"""

from __future__ import annotations

import logging
import os
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config import Config
from megatron_qwen.data.preference import (
    PreferenceDataset,
    collate_packed_pairs,
    collate_pairs,
    pack_pair_rows,
    pair_positions,
)
from megatron_qwen.model.context_parallel import packed_seq_params
from megatron_qwen.training.dpo_loss import dpo_loss, sequence_logps

log = logging.getLogger("megatron_qwen.train")

METRICS = ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
           "logps/chosen", "logps/rejected")
# Per micro-batch [pairs, metric sums...] since the last pop_metrics(scope): "train" steps, "val" evaluations.
_pending: dict[str, list[torch.Tensor]] = {"train": [], "val": []}


class PairRows:
    """Sample-indexed view of a PreferenceDataset (see the module doc): sequences of [2B, S] blocks, or packed rows."""

    def __init__(self, pairs: PreferenceDataset, seq_length: int, pad_id: int, dpo, shuffle: bool, seed: int,
                 packed: bool = False, scope: str = "train"):
        self.pairs, self.seq_length, self.pad_id, self.packed = pairs, seq_length, pad_id, packed
        self.scope = scope  # where the loss function's metrics go: "train", or "val" for held-out pairs
        self.hparams = {"beta": dpo.beta, "label_smoothing": dpo.label_smoothing, "sft_weight": dpo.sft_weight}
        n = len(pairs)
        if n == 0:
            raise ValueError("the DPO dataset has no pairs")
        lengths = pairs.lengths()
        self._check_fit(lengths)
        rng = np.random.default_rng(seed)
        self.order = rng.permutation(n) if shuffle else np.arange(n)
        self.rows: list[list[int]] = []  # packed: the pair ids of every row
        if packed:
            self.rows = pack_pair_rows(lengths, self.order, seq_length)
            if shuffle:  # best-fit decreasing emits the longest pairs first
                self.rows = [self.rows[i] for i in rng.permutation(len(self.rows))]
            log.info("DPO: %d pairs packed into %d rows of %d positions (%.1f%% padding)", n, len(self.rows),
                     seq_length, 100 * (1 - pair_positions(lengths, True).sum() / (len(self.rows) * seq_length)))
        self.reference: torch.Tensor | None = None  # [pairs, 2] (chosen, rejected) summed log-probs

    def _check_fit(self, lengths: np.ndarray) -> None:
        need = pair_positions(lengths, self.packed)
        bad = np.flatnonzero(need > self.seq_length)
        if bad.size:
            i = int(bad[0])
            rule = (f"both sequences together need <= data.seq_length + 2 = {self.seq_length + 2} tokens (one packed "
                    f"row); preprocess with --sft-seq-length {self.seq_length // 2} or raise data.seq_length"
                    if self.packed else f"each sequence needs <= data.seq_length + 1 = {self.seq_length + 1} tokens; "
                    f"preprocess with --sft-seq-length {self.seq_length}")
            raise ValueError(f"{bad.size} of {len(lengths)} DPO pairs do not fit (the first: pair {i}, chosen "
                             f"{lengths[i, 0]} + rejected {lengths[i, 1]} tokens): {rule}")

    def __len__(self) -> int:
        return len(self.rows) if self.packed else 2 * len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        if self.packed:
            return {"pairs": self.rows[index]}
        return {"pair": int(self.order[index // 2]), "side": index % 2}

    def collate(self, samples: list[dict], seq_length: int) -> dict:
        if self.packed:
            if len(samples) != 1:
                raise ValueError("packed DPO rows need train.micro_batch_size=1 (a row already holds several pairs)")
            return self.batch_of_pairs(samples[0]["pairs"])
        ids = [s["pair"] for s in samples[0::2]]
        if len(samples) % 2 or any(s["side"] != k % 2 or s["pair"] != ids[k // 2] for k, s in enumerate(samples)):
            raise ValueError("a DPO micro-batch must hold whole pairs (chosen, rejected); train.micro_batch_size "
                             "and the data-parallel share of train.global_batch_size count sequences and must be even")
        return self.batch_of_pairs(ids)

    def batch_of_pairs(self, ids: list[int]) -> dict:
        """One micro-batch of these pairs: a [2B, S] block, or (packed) one THD row holding all of them."""
        pairs, s = [self.pairs[i] for i in ids], self.seq_length
        if self.packed:
            batch = collate_packed_pairs(pairs, s, self.pad_id)
            batch["packed_seq_params"] = packed_seq_params(batch["cu_seqlens"])
            batch["attention_mask"] = None
        else:
            batch = collate_pairs(pairs, s, self.pad_id)
            batch["attention_mask"] = torch.ones(1, 1, s, s, dtype=torch.bool).triu(1)
        for key in ("tokens", "labels", "position_ids"):
            batch[key] = batch[key].long()
        batch["loss_mask"] = batch["loss_mask"].float()
        batch["pair_ids"] = torch.tensor(ids, dtype=torch.long)
        ref = self.reference[ids] if self.reference is not None else torch.zeros(len(ids), 2, dtype=torch.float64)
        batch["reference_logps"] = torch.cat([ref[:, 0], ref[:, 1]]).float()  # sequence order: chosen, then rejected
        batch["dpo"] = self.hparams
        batch["metrics_scope"] = self.scope
        return batch

    def reference_groups(self, micro_batch_size: int, dp_rank: int, dp: int) -> list[list[int]]:
        """This data-parallel rank's share of the pairs for the reference pass: pair ids per micro-batch."""
        if self.packed:
            return self.rows[dp_rank::dp]
        per_mb = micro_batch_size // 2
        mine = list(range(dp_rank, len(self.pairs), dp))
        if mine and len(mine) % per_mb:
            mine += [mine[-1]] * (per_mb - len(mine) % per_mb)  # full micro-batches (fixed pipeline shapes)
        return [mine[i:i + per_mb] for i in range(0, len(mine), per_mb)]


def _forward(batch: dict, model):
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"],
                 packed_seq_params=batch.get("packed_seq_params"))


def pair_logps(batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([2B] summed answer log-probs, [2B] answer token counts), chosen sequences first, from the per-token
    −log p: summed per row ([2B, S] block) or per segment (packed row, `sequence_ids`)."""
    per_token = -output_tensor.float()
    seq = batch.get("sequence_ids")
    if seq is None:
        return sequence_logps(per_token, batch["loss_mask"])
    n = 2 * batch["num_pairs"]
    idx = seq.reshape(-1).to(per_token.device)
    mask = batch["loss_mask"].reshape(-1).to(per_token)
    sums = per_token.new_zeros(n + 1).index_add(0, idx, per_token.reshape(-1) * mask)
    counts = mask.new_zeros(n + 1).index_add(0, idx, mask)
    return sums[:n], counts[:n]  # index n collects the row's tail padding


def dpo_loss_func(batch: dict, output_tensor: torch.Tensor):
    """(DPO loss × pairs, pairs, report) of one micro-batch; output_tensor is the per-token −log p."""
    logps, counts = pair_logps(batch, output_tensor)
    ref = batch["reference_logps"].to(logps.device)
    b = batch["num_pairs"]
    out = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], chosen_tokens=counts[:b], **batch["dpo"])
    total = out.loss * b
    sums = [float(b)] + [float(out.metrics[k]) * b if k in out.metrics else 0.0 for k in METRICS]
    _pending[batch.get("metrics_scope", "train")].append(torch.tensor(sums, dtype=torch.float64))
    report = torch.stack([total.detach(), torch.tensor(float(b), device=total.device)])
    return total, torch.tensor(b, dtype=torch.int, device=total.device), {"lm loss": report}


def dpo_forward_step(data_iterator, model):
    batch = next(data_iterator)
    return _forward(batch, model), partial(dpo_loss_func, batch)


def _reference_loss_func(batch: dict, output_tensor: torch.Tensor):
    logps, _ = pair_logps(batch, output_tensor)
    zero = logps.sum() * 0
    return zero, torch.tensor(1, dtype=torch.int), {"logps": logps.detach().cpu(), "pair_ids": batch["pair_ids"]}


def _reference_step(data_iterator, model):
    batch = next(data_iterator)
    return _forward(batch, model), partial(_reference_loss_func, batch)


def pop_metrics(scope: str = "train") -> dict[str, float]:
    """Mean DPO metrics over the pairs of `scope` ("train": trained since the last call; "val": the last
    evaluation) — a collective: every rank must call it together."""
    totals = torch.zeros(1 + len(METRICS), dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for t in _pending[scope]:
            totals += t
    _pending[scope].clear()
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist.broadcast(totals, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    pairs = float(totals[0])
    return {k: float(v) / max(pairs, 1.0) for k, v in zip(METRICS, totals[1:].tolist())}


def compute_reference_logps(chunks, rows: PairRows, micro_batch_size: int, rounds: int = 8) -> torch.Tensor:
    """[pairs, 2] summed answer log-probs of `chunks` (forward-only), identical on every rank."""
    from megatron_qwen.training.step import run_forward_backward

    n = len(rows.pairs)
    groups = rows.reference_groups(micro_batch_size, parallel_state.get_data_parallel_rank(),
                                   parallel_state.get_data_parallel_world_size())
    table = torch.zeros(n, 2, dtype=torch.float64)
    saved, rows.reference = rows.reference, None
    for chunk in chunks:
        chunk.eval()
    cuda = torch.cuda.is_available()
    with torch.no_grad():
        for start in range(0, len(groups), rounds):
            mbs = [rows.batch_of_pairs(ids) for ids in groups[start:start + rounds]]
            if cuda:
                mbs = [{k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()} for b in mbs]
            reports = run_forward_backward(chunks, mbs, rows.seq_length, micro_batch_size, forward_only=True,
                                           step_func=_reference_step)
            if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
                for r in reports:
                    ids, lp = r["pair_ids"].cpu(), r["logps"].double()
                    table[ids, 0], table[ids, 1] = lp[:len(ids)], lp[len(ids):]
    for chunk in chunks:
        chunk.train()
    rows.reference = saved
    dist.all_reduce(table, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist.broadcast(table, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return table


def _cache_path(cfg: Config, scope: str) -> Path | None:
    """post.dpo.reference_cache (default checkpoint.dir/reference_logps.pt); held-out pairs add `_val`."""
    ref, ck = cfg.post.dpo.reference_cache, cfg.checkpoint.dir
    base = Path(ref) if ref else (Path(ck) / "reference_logps.pt" if ck else None)
    if base is None or scope == "train":
        return base
    return base.with_name(f"{base.stem}_{scope}{base.suffix}")


def _meta(cfg: Config, rows: PairRows, prefix: str) -> dict:
    return {"data": str(Path(str(prefix).removesuffix("_text_document")).resolve()), "pairs": len(rows.pairs),
            "seq_length": cfg.data.seq_length, "init_path": cfg.checkpoint.init_path, "pad_id": rows.pad_id,
            "packed": rows.packed}


def _reference_model(cfg: Config):
    """A frozen copy of the start weights (checkpoint.init_path), for a resumed run without the cache."""
    from megatron_qwen.config import ConfigError
    from megatron_qwen.convert.ckpt_io import load_model_checkpoint
    from megatron_qwen.model.build import build_model
    from megatron_qwen.training import checkpoint as ckpt_mod
    from megatron_qwen.training.loop import params_dtype

    if cfg.checkpoint.init_from != "checkpoint":
        raise ConfigError("a resumed DPO run lost its reference log-probs (post.dpo.reference_cache) and can only "
                          "recompute them from checkpoint.init_from=checkpoint + checkpoint.init_path")
    chunks = build_model(cfg.model, cfg.parallel, cfg.data.seq_length, params_dtype(cfg))
    load_model_checkpoint(chunks, ckpt_mod.resolve_checkpoint(cfg.checkpoint.init_path))
    return chunks


def build_dpo_sources(cfg: Config, chunks, resumed: bool) -> tuple[PairRows, PairRows | None]:
    """(train, held-out) pair sources with their reference tables; held-out only with post.dpo.valid_prefix."""
    # The reference is the policy before its first update; a resumed run reloads the start weights (once, and
    # only if some table is not cached).
    ref_chunks = cache(lambda: _reference_model(cfg)) if resumed else (lambda: chunks)
    train = _pair_source(cfg, cfg.data.blend[-1], "train", ref_chunks, resumed)
    valid = None
    if cfg.post.dpo.valid_prefix:
        valid = _pair_source(cfg, cfg.post.dpo.valid_prefix, "val", ref_chunks, resumed)
    return train, valid


def _pair_source(cfg: Config, prefix: str, scope: str, ref_chunks, resumed: bool) -> PairRows:
    """One pair source with its reference table: from the cache, or computed now (see the module doc)."""
    from megatron_qwen.training.post.sft import dataset_prefix

    pad = cfg.post.pad_token_id if cfg.post.pad_token_id is not None else cfg.data.eod_token_id
    shuffle = cfg.post.shuffle and scope == "train"  # held-out pairs are evaluated in their stored order
    rows = PairRows(PreferenceDataset(dataset_prefix(prefix)), cfg.data.seq_length, pad, cfg.post.dpo, shuffle,
                    cfg.seed, packed=cfg.data.packed_sequences, scope=scope)
    path, meta = _cache_path(cfg, scope), _meta(cfg, rows, prefix)
    cached = torch.load(path, weights_only=False) if path and path.exists() else None
    if cached is not None and cached["meta"] == meta:
        log.info("reference log-probs of %d %s pairs from %s", len(rows.pairs), scope, path)
        rows.reference = cached["logps"]
        return rows
    if cached is not None and not resumed:
        log.warning("%s was computed for %s, not %s: recomputing", path, cached["meta"], meta)
    log.info("reference log-probs of %d %s pairs: one forward-only pass of the %s", len(rows.pairs), scope,
             "start weights (reloaded)" if resumed else "policy before its first update")
    rows.reference = compute_reference_logps(ref_chunks(), rows, cfg.train.micro_batch_size)
    if path and dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"meta": meta, "logps": rows.reference}, tmp)
        os.replace(tmp, path)
    return rows
