"""DPO on TP=2, PP=2 and DP=2 computes the same steps as one process, through the real entry point.

One process trains a short SFT stage on toy conversations; its checkpoint is the common start (weights
resharded by dist_checkpointing when each layout loads it) and the frozen DPO reference. Each layout then
runs the reference pass and four DPO steps on the same toy pairs, one pair per micro-batch (so DP=2 splits
the global batch differently from one process); per-step losses and DPO metrics must agree (rtol 1e-5).
Packed SFT (THD rows) on PP=2 is compared the same way, and so is packed DPO (whole pairs in THD rows,
two rows per step holding different numbers of pairs) on TP=2, PP=2 and DP=2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration._train_helpers import metrics, train
from tests.unit.training._toy import write_dpo, write_sft

RTOL = 1e-5
LAYOUTS = {"tp2": ["parallel=tp2"], "pp2": ["parallel=pp2"], "dp2": []}


def common(ck: Path, *extra: str) -> list[str]:
    # Adam's eps raised as in tests/distributed/_equivalence.py (float noise on zero-gradient key biases).
    return ["model=tiny", f"checkpoint.dir={ck}", "data.eod_token_id=0", "train.log_interval=1",
            "optim.warmup_steps=0", "optim.adam_eps=1e-4", "optim.schedule=constant", *extra]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-layouts")
    sft = write_sft(str(root / "sft"), 48, seed=1)
    pairs = write_dpo(str(root / "pairs"), 16, seed=2)
    init = root / "sft_ck"
    train(1, common(init, "stage=sft_coarse", "checkpoint.init_from=none", f"data.blend=[{sft}]",
                    "data.seq_length=64", "train.train_iters=2", "train.global_batch_size=4", "optim.lr=3e-3"), root)
    return root, init, sft, pairs


def dpo_args(ck: Path, init: Path, pairs: str) -> list[str]:
    return common(ck, "stage=dpo", f"checkpoint.init_path={init}", f"data.blend=[{pairs}]", "data.seq_length=24",
                  "train.train_iters=4", "train.global_batch_size=8", "train.micro_batch_size=2", "optim.lr=3e-3",
                  "optim.min_lr=3e-3", "post.dpo.beta=0.5", "post.dpo.label_smoothing=0.1", "post.dpo.sft_weight=0.1")


def packed_dpo_args(ck: Path, init: Path, pairs: str) -> list[str]:
    # 16 toy pairs of 18..34 positions -> ~8 rows of 64; global batch = 2 rows, one row per micro-batch
    return common(ck, "stage=dpo", f"checkpoint.init_path={init}", f"data.blend=[{pairs}]", "data.seq_length=64",
                  "data.packed_sequences=true", "train.train_iters=4", "train.global_batch_size=2",
                  "train.micro_batch_size=1", "optim.lr=3e-3", "optim.min_lr=3e-3", "post.dpo.beta=0.5",
                  "post.dpo.label_smoothing=0.1", "post.dpo.sft_weight=0.1")


@pytest.fixture(scope="module")
def single(start):
    root, init, _, pairs = start
    ck = root / "dpo_single"
    train(1, dpo_args(ck, init, pairs), root)
    return metrics(ck / "metrics.jsonl")


def compare(ref: dict, got: dict, name: str, keys: tuple[str, ...]) -> None:
    print(f"\n[{name}] step  key               one process      {name:<12}  rel.diff")
    for step in sorted(ref):
        for key in keys:
            a, b = ref[step][key], got[step][key]
            print(f"[{name}] {step:>4}  {key:<16} {a:.10f}  {b:.10f}  {abs(a - b) / max(abs(a), 1e-12):.2e}")
    assert sorted(ref) == sorted(got)
    for step in ref:
        for key in keys:
            # Rewards are beta x differences of float32 sums of ~30 log-probs (~-25 each): absolute tolerance.
            tol = dict(abs=2e-5) if key.startswith("rewards/") else dict(rel=RTOL, abs=1e-7)
            assert got[step][key] == pytest.approx(ref[step][key], **tol), (name, step, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_dpo_layout_matches_single_process(name, start, single, tmp_path):
    _, init, _, pairs = start
    ck = tmp_path / "ck"
    train(2, dpo_args(ck, init, pairs) + LAYOUTS[name], tmp_path)
    got = metrics(ck / "metrics.jsonl")
    compare(single, got, name, ("loss", "loss/dpo", "loss/sft", "rewards/margin", "rewards/accuracy"))
    # each step trains on new pairs, so the loss need not fall; the policy must have left the reference
    assert abs(single[4]["rewards/margin"]) > 1e-3 and single[1]["rewards/margin"] == 0


@pytest.mark.slow
def test_packed_sft_pp2_matches_single_process(start, tmp_path):
    _, init, sft, _ = start
    runs = {}
    for name, world, extra in (("single", 1, []), ("pp2", 2, ["parallel=pp2"])):
        ck = tmp_path / name
        train(world, common(ck, "stage=sft_fine", f"checkpoint.init_path={init}", f"data.blend=[{sft}]",
                            "data.seq_length=64", "train.train_iters=3", "train.global_batch_size=4",
                            "optim.lr=3e-3", *extra), tmp_path)
        runs[name] = metrics(ck / "metrics.jsonl")
    compare(runs["single"], runs["pp2"], "sft-pp2", ("loss",))


@pytest.fixture(scope="module")
def packed_single(start):
    root, init, _, pairs = start
    ck = root / "dpo_packed_single"
    out = train(1, packed_dpo_args(ck, init, pairs), root)
    assert "16 pairs packed into" in out
    return metrics(ck / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp2", "pp2", "dp2"])  # dp2: one row per rank, unequal pair counts
def test_packed_dpo_layout_matches_single_process(name, start, packed_single, tmp_path):
    _, init, _, pairs = start
    ck = tmp_path / "ck"
    train(2, packed_dpo_args(ck, init, pairs) + LAYOUTS[name], tmp_path)
    compare(packed_single, metrics(ck / "metrics.jsonl"), f"packed-{name}",
            ("loss", "loss/dpo", "loss/sft", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected"))
    assert abs(packed_single[4]["rewards/margin"]) > 1e-3 and packed_single[1]["rewards/margin"] == 0
