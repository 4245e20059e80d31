"""Stage 3 end to end on CPU through `megatron-qwen train`: SFT coarse -> SFT fine -> DPO on toy
conversations and pairs (tests.unit.training._toy.py), checkpoints chained with init_from=checkpoint,
DPO resumed with and without its reference cache, and DPO reward accuracy rising above 0.9 (also as seen by
the evaluation on post.dpo.valid_prefix)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _train_helpers import metrics, train

from tests.unit.training._toy import write_dpo, write_sft


def common(ck: Path, *extra: str) -> list[str]:
    return ["model=tiny", f"checkpoint.dir={ck}", "data.eod_token_id=0", "train.log_interval=1",
            "optim.warmup_steps=0", *extra]


@pytest.mark.slow
def test_sft_coarse_fine_then_dpo_with_resume(tmp_path: Path):
    coarse_data = write_sft(str(tmp_path / "coarse"), 96, seed=1)
    fim_data = write_sft(str(tmp_path / "fim"), 32, seed=2)  # stands in for an --mode sft-fim dataset
    fine_data = write_sft(str(tmp_path / "fine"), 32, seed=3)
    pairs = write_dpo(str(tmp_path / "pairs"), 24, seed=4)
    coarse, fine, dpo = tmp_path / "coarse_ck", tmp_path / "fine_ck", tmp_path / "dpo_ck"

    out = train(1, common(coarse, "stage=sft_coarse", "checkpoint.init_from=none", f"data.blend=[{coarse_data}]",
                          f"post.sft.fim_prefix={fim_data}", "post.sft.fim_share=0.25", "data.seq_length=64",
                          "train.train_iters=8", "train.global_batch_size=4", "optim.lr=3e-3", "optim.min_lr=3e-4"),
                tmp_path)
    m = metrics(coarse / "metrics.jsonl")
    assert m[8]["loss"] < m[1]["loss"], out
    assert (coarse / "latest").read_text().strip() == "iter_0000008"

    train(1, common(fine, "stage=sft_fine", f"checkpoint.init_path={coarse}", f"data.blend=[{fine_data}]",
                    "data.seq_length=64", "train.train_iters=3", "train.global_batch_size=4", "optim.lr=1e-3",
                    "optim.min_lr=1e-4", f"post.sft.valid_prefix={coarse_data}", "train.eval_interval=3",
                    "train.eval_iters=1"), tmp_path)
    m = metrics(fine / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in m.values()) and len(m) == 3
    records = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("val_loss", 0) > 0 for r in records), records  # held-out conversations evaluated

    dpo_args = common(dpo, "stage=dpo", f"checkpoint.init_path={fine}", f"data.blend=[{pairs}]", "data.seq_length=24",
                      "train.global_batch_size=8", "train.micro_batch_size=4", "optim.lr=1e-3", "optim.min_lr=1e-3",
                      "optim.schedule=constant", "checkpoint.save_interval=2")
    out = train(1, dpo_args + ["train.train_iters=3"], tmp_path)
    assert "one forward-only pass of the policy before its first update" in out
    m = metrics(dpo / "metrics.jsonl")
    # the reference is the start weights, so the first step's loss is exactly ln 2 and the rewards are 0
    assert m[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[1]["rewards/margin"] == pytest.approx(0, abs=1e-6)
    for key in ("rewards/accuracy", "rewards/chosen", "rewards/rejected", "logps/chosen", "loss/dpo"):
        assert key in m[3], key
    cache = torch.load(dpo / "reference_logps.pt", weights_only=False)
    assert cache["logps"].shape == (24, 2) and (cache["logps"] < 0).all()

    # resume: the cache is reused; without it the reference is rebuilt from checkpoint.init_path (same values)
    out = train(1, dpo_args + ["train.train_iters=4"], tmp_path)
    assert "reference log-probs of 24 train pairs from" in out
    (dpo / "reference_logps.pt").unlink()
    out = train(1, dpo_args + ["train.train_iters=5"], tmp_path)
    assert "start weights (reloaded)" in out
    again = torch.load(dpo / "reference_logps.pt", weights_only=False)
    assert torch.allclose(again["logps"], cache["logps"], rtol=1e-6, atol=1e-5)
    assert set(metrics(dpo / "metrics.jsonl")) == {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_dpo_reward_accuracy_rises_above_0_9(tmp_path: Path):
    pairs = write_dpo(str(tmp_path / "pairs"), 64, seed=5)
    # The evaluation path (post.dpo.valid_prefix) pointed at the training pairs themselves: it must see what
    # training achieved. (On unseen toy pairs this from-scratch tiny model stays near chance — it memorizes
    # its 64 pairs — which is what a held-out set is there to show.)
    ck = tmp_path / "ck"
    train(1, common(ck, "stage=dpo", "checkpoint.init_from=none", f"data.blend=[{pairs}]", "data.seq_length=24",
                    "train.train_iters=100", "train.global_batch_size=16", "train.micro_batch_size=16",
                    "train.log_interval=10", "optim.lr=3e-3", "optim.min_lr=3e-3", "optim.schedule=constant",
                    "post.dpo.beta=0.5", f"post.dpo.valid_prefix={pairs}", "train.eval_interval=50",
                    "train.eval_iters=4"), tmp_path, timeout=400)
    assert torch.load(ck / "reference_logps_val.pt", weights_only=False)["logps"].shape == (64, 2)
    records = [json.loads(line) for line in (ck / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in records if "val_loss" in r}
    print("\nevaluated: " + ", ".join(f"step {s}: accuracy {r['val/rewards/accuracy']:.3f} loss {r['val_loss']:.3f}"
                                     for s, r in sorted(val.items())))
    assert sorted(val) == [50, 100]
    for r in val.values():  # the two channels agree: the loop's val_loss is the mean DPO loss (no SFT term)
        assert r["val_loss"] == pytest.approx(r["val/loss/dpo"], rel=1e-6)
    assert val[100]["val/rewards/accuracy"] > 0.95 and val[100]["val_loss"] < 0.1
    m = metrics(ck / "metrics.jsonl")
    curve = [(s, m[s]["rewards/accuracy"], m[s]["rewards/margin"]) for s in sorted(m)]
    print("\nstep  accuracy  margin")
    for s, acc, margin in curve:
        print(f"{s:>4}  {acc:8.3f}  {margin:7.3f}")
    assert curve[0][1] < 0.9
    assert all(acc > 0.9 for _, acc, _ in curve[-3:]), curve
    assert curve[-1][2] > curve[0][2] + 1.0
