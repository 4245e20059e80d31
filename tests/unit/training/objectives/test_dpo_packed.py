"""Packed DPO (data.packed_sequences=true): whole pairs in THD rows, one segment per sequence.

The row layout (cu_seqlens, sequence_ids, both sequences of a pair in one row), the overlong rule, the
config rule, and, on the tiny GPTModel in one process, that a packed row gives every pair the same
log-probs (reference pass) and the same DPO loss as the padded [2B, S] layout: no sequence attends to
another segment of its row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import megatron_qwen.training.objectives.dpo as dpo_mod
from megatron_qwen.config import Config, ConfigError
from megatron_qwen.platform.spawn import run_workers
from megatron_qwen.training.datasets.preference import PairRows, PreferenceDataset
from megatron_qwen.training.validate import validate_config
from tests.unit.training._toy import write_dpo

SEQ = 64


def packed_rows(prefix: str, seq: int = SEQ, shuffle: bool = True) -> dpo_mod.PairRows:
    return PairRows(PreferenceDataset(prefix), seq, 0, shuffle=shuffle, seed=5, packed=True)


def test_packed_rows_hold_whole_pairs_once(tmp_path):
    rows = packed_rows(write_dpo(str(tmp_path / "dpo"), 20, seed=3))
    assert len(rows) == len(rows.rows) < 20  # several pairs per row
    ids = sorted(i for row in rows.rows for i in row)
    assert ids == list(range(20))
    again = packed_rows(str(tmp_path / "dpo"))
    assert again.rows == rows.rows  # deterministic: every rank builds the same rows
    lengths = rows.pairs.lengths()
    for row in rows.rows:
        assert (lengths[row].sum(1) - 2).sum() <= SEQ
        order = [int(np.flatnonzero(rows.order == i)[0]) for i in row]
        assert order == sorted(order)  # pairs keep the shuffled order inside a row


def test_packed_row_layout(tmp_path):
    rows = packed_rows(write_dpo(str(tmp_path / "dpo"), 12, seed=4), shuffle=False)
    rows.reference = torch.arange(24, dtype=torch.float64).view(12, 2)
    row = max(rows.rows, key=len)
    batch = rows.collate([rows[rows.rows.index(row)]], SEQ)
    b = len(row)
    assert b >= 2 and batch["num_pairs"] == b and batch["tokens"].shape == (1, SEQ)
    assert batch["attention_mask"] is None and batch["pair_ids"].tolist() == row
    seqs = [rows.pairs[i][side] for i in row for side in ("chosen", "rejected")]
    widths = [len(ids) - 1 for ids, _ in seqs]
    cu = np.concatenate([[0], np.cumsum(widths)]).tolist()
    assert batch["cu_seqlens"].tolist() == cu + ([SEQ] if cu[-1] < SEQ else [])
    psp = batch["packed_seq_params"]
    assert psp.qkv_format == "thd" and torch.equal(psp.cu_seqlens_q, batch["cu_seqlens"])
    seq_ids, tokens, pos = batch["sequence_ids"][0], batch["tokens"][0], batch["position_ids"][0]
    for k, (ids, mask) in enumerate(seqs):
        lo, hi = cu[k], cu[k + 1]
        pair, side = divmod(k, 2)
        assert (seq_ids[lo:hi] == side * b + pair).all()  # chosen k -> k, rejected k -> b + k
        assert tokens[lo:hi].tolist() == ids[:-1].tolist()
        assert pos[lo:hi].tolist() == list(range(hi - lo))  # positions restart per sequence
        assert batch["loss_mask"][0, lo:hi].tolist() == mask[1:].astype(np.float32).tolist()
    assert (seq_ids[cu[-1]:] == 2 * b).all() and batch["loss_mask"][0, cu[-1]:].sum() == 0
    ref = rows.reference[row]
    assert batch["reference_logps"].tolist() == ref[:, 0].tolist() + ref[:, 1].tolist()
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        rows.collate([rows[0], rows[1]], SEQ)


def test_pair_logps_sum_per_segment():
    # two pairs in a row of 10: segments c0 [0,2), r0 [2,5), c1 [5,7), r1 [7,9), padding [9,10)
    seq_ids = torch.tensor([[0, 0, 2, 2, 2, 1, 1, 3, 3, 4]])
    nll = torch.arange(1.0, 11.0).view(1, 10)
    mask = torch.tensor([[0, 1, 0, 1, 1, 1, 1, 0, 1, 1]], dtype=torch.float32)  # the padding's 1 must be ignored
    logps, counts = dpo_mod.pair_logps({"sequence_ids": seq_ids, "loss_mask": mask, "num_pairs": 2}, nll)
    assert logps.tolist() == [-2.0, -13.0, -9.0, -9.0] and counts.tolist() == [1.0, 2.0, 2.0, 1.0]


def test_packed_pairs_that_do_not_fit_are_counted(tmp_path):
    prefix = write_dpo(str(tmp_path / "dpo"), 10, seed=3)  # pairs of 20..36 tokens: 18..34 positions packed
    need = PreferenceDataset(prefix).lengths().sum(1) - 2
    with pytest.raises(ValueError, match=f"{int((need > 24).sum())} of 10 DPO pairs do not fit") as err:
        packed_rows(prefix, seq=24)
    assert "--sft-seq-length 12" in str(err.value)
    PairRows(PreferenceDataset(prefix), 24, 0, shuffle=False, seed=0)  # padded: fits


def packed_dpo_cfg(**train) -> Config:
    cfg = Config()
    cfg.stage.objective, cfg.data.blend, cfg.data.seq_length = "dpo", ["/data/x"], 32
    cfg.data.packed_sequences = True
    cfg.train.micro_batch_size, cfg.train.global_batch_size = train.get("mbs", 1), train.get("gbs", 6)
    return cfg


def test_packed_dpo_config_rules():
    validate_config(packed_dpo_cfg(), world_size=2)  # 3 rows per data-parallel rank: rows, not sequences
    with pytest.raises(ConfigError) as err:
        validate_config(packed_dpo_cfg(mbs=2, gbs=8), world_size=1)
    for key in ("stage.objective=dpo", "data.packed_sequences=true", "train.micro_batch_size=1 (got 2)"):
        assert key in str(err.value)


def _packed_vs_padded(prefix: str) -> dict:
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    model, parallel = get_preset("tiny"), ParallelConfig()
    init_distributed(parallel, model, SEQ, seed=1)
    chunk = build_model(model, parallel, SEQ)[0]
    cfg = Config()
    cfg.post.dpo.beta, cfg.post.dpo.label_smoothing, cfg.post.dpo.sft_weight = 0.5, 0.1, 0.1
    objective = dpo_mod.DPO(cfg)
    pairs = PreferenceDataset(prefix)
    packed = PairRows(pairs, SEQ, 0, shuffle=True, seed=5, packed=True)
    padded = PairRows(pairs, SEQ, 0, shuffle=True, seed=5)
    tables = {"packed": dpo_mod.compute_reference_logps([chunk], packed, 1),
              "padded": dpo_mod.compute_reference_logps([chunk], padded, 4)}
    reference = tables["padded"] - 0.5  # so the DPO loss is not at its start value log 2
    packed.reference = padded.reference = reference
    losses = {"packed": [], "padded": []}
    with torch.no_grad():
        for row in packed.rows:
            for name, rows in (("packed", packed), ("padded", padded)):
                output, loss_func = objective.forward_step(iter([rows.batch_of_pairs(row)]), chunk)
                total, count, _ = loss_func(output)
                losses[name].append((float(total), int(count)))
    return {"tables": tables, "losses": losses, "rows": [len(r) for r in packed.rows]}


def test_packed_logps_equal_padded_on_tiny_model(tmp_path):
    prefix = write_dpo(str(tmp_path / "dpo"), 16, seed=2)
    (r,) = run_workers(1, _packed_vs_padded, prefix)
    assert max(r["rows"]) >= 2, "rows should hold several pairs"
    packed, padded = r["tables"]["packed"], r["tables"]["padded"]
    diff = float((packed - padded).abs().max())
    print(f"\npacked vs padded reference log-probs of {len(packed)} pairs ({len(r['rows'])} rows): "
          f"max abs diff {diff:.2e} (values {float(padded.min()):.2f}..{float(padded.max()):.2f})")
    assert (padded < 0).all() and diff < 1e-4
    for (lp, np_), (ld, nd) in zip(r["losses"]["packed"], r["losses"]["padded"]):
        assert np_ == nd and lp == pytest.approx(ld, rel=1e-5, abs=1e-6)
