"""The sft_lora stage through the real entry point: adapter-only checkpoints that resume exactly, and their
export to Hugging Face PEFT (and merged) matching the Megatron model with its adapters.

A random tiny base checkpoint is written once; an sft_lora run of 4 steps (lr high enough to move the
adapters visibly) saves at steps 2 and 4. A copy cut back to step 2 resumes and must log the same losses and
end with the same adapters. The final adapters are then exported (tests/integration is the layer that may use
both the trainer's output and the converter).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _train_helpers import metrics, train

from tests.unit.training._toy import write_sft

pytestmark = pytest.mark.slow
STEPS = ["train.train_iters=4", "checkpoint.save_interval=2", "checkpoint.keep_last=0"]


def _write_base(path: str) -> None:
    from megatron_qwen.checkpointing.weights import save_model_checkpoint
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    model = get_preset("tiny")
    init_distributed(ParallelConfig(), model, 64, seed=3)
    save_model_checkpoint(build_model(model, ParallelConfig(), 64), path, model=model)


def lora_args(ck: Path, base: Path, sft: str, *extra: str) -> list[str]:
    return ["model=tiny", "stage=sft_lora", f"checkpoint.dir={ck}", f"checkpoint.init_path={base}",
            f"data.blend=[{sft}]", "data.seq_length=64", "data.eod_token_id=0", "train.global_batch_size=4",
            "train.log_interval=1", "optim.lr=1e-2", "optim.min_lr=1e-2", "optim.warmup_steps=0",
            "lora.rank=4", "lora.alpha=8", "lora.dropout=0.0", *STEPS, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from megatron_qwen.convert.importer import run_single_process

    root = tmp_path_factory.mktemp("lora-stage")
    base = root / "base"
    run_single_process(_write_base, str(base))
    sft = write_sft(str(root / "sft"), 48, seed=1)
    ck = root / "ck"
    train(1, lora_args(ck, base, sft), root)
    return root, base, sft, ck


def test_checkpoint_holds_the_adapters_and_names_its_base(run):
    from megatron.core import dist_checkpointing

    _, base, _, ck = run
    final = ck / "iter_0000004"
    keys = sorted(dist_checkpointing.load_tensors_metadata(str(final)))
    assert keys and all(".lora." in k for k in keys), keys
    assert len([k for k in keys if not k.startswith("optimizer.")]) == 8  # 4 targets x (A, B); + Adam's moments
    common = dist_checkpointing.load_common_state_dict(str(final))
    record = common["train_state"]["lora"]
    assert record["base"] == str(base.resolve()) and record["rank"] == 4
    size = sum(f.stat().st_size for f in final.glob("*.distcp"))
    base_size = sum(f.stat().st_size for f in base.glob("*.distcp"))
    assert size < base_size / 2  # adapters and their Adam moments, not the base weights


def test_resume_from_step2_gives_the_same_losses_and_adapters(run, tmp_path):
    root, base, sft, ck = run
    cut = tmp_path / "ck"
    shutil.copytree(ck, cut)
    shutil.rmtree(cut / "iter_0000004")
    (cut / "latest").write_text("iter_0000002\n")
    (cut / "metrics.jsonl").unlink()
    out = train(1, lora_args(cut, base, sft), tmp_path)
    assert f"resuming from {cut / 'iter_0000002'}" in out
    ref, resumed = metrics(ck / "metrics.jsonl"), metrics(cut / "metrics.jsonl")
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step]["loss"] == ref[step]["loss"], step
    assert ref[4]["loss"] < ref[1]["loss"]
    from tests.distributed._equivalence import full_tensors

    a = full_tensors(str(ck / "iter_0000004"), str(tmp_path / "a.pt"))
    b = full_tensors(str(cut / "iter_0000004"), str(tmp_path / "b.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
