"""The sft_lora stage through the real entry point: adapter-only checkpoints that resume exactly, and their
export to Hugging Face PEFT (and merged) matching the Megatron model with its adapters.

A random tiny base checkpoint is written once; an sft_lora run of 4 steps (lr high enough to move the
adapters visibly) saves at steps 2 and 4. A copy cut back to step 2 resumes and must log the same losses and
end with the same adapters. The final adapters are then exported (tests/integration is the layer that may use
both the trainer's output and the converter).
"""

from __future__ import annotations

import json
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


def _megatron_logits(base: str, adapters: str, tokens):
    """(logits with the adapters, logits with them switched off) of the Megatron model, one process."""
    from megatron_qwen.checkpointing.weights import (
        load_model_checkpoint,
        load_trainable_checkpoint,
        read_record,
    )
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.convert.lora_export import read_adapter_config
    from megatron_qwen.convert.verify import megatron_outputs_in_group
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.lora import adapters_disabled, apply_lora
    from megatron_qwen.platform import init_distributed

    model, _ = read_record(base)
    lora, _ = read_adapter_config(adapters)
    seq = tokens.shape[1] - 1
    init_distributed(ParallelConfig(), model, seq)
    chunks = build_model(model, ParallelConfig(), seq)
    load_model_checkpoint(chunks, base)
    apply_lora(chunks, lora, seed=0)  # A random, B zero: both replaced by the checkpoint's
    load_trainable_checkpoint(chunks, adapters)
    with_adapters, _ = megatron_outputs_in_group(base, tokens, chunks)
    with adapters_disabled(chunks):
        without, _ = megatron_outputs_in_group(base, tokens, chunks)
    return with_adapters, without


def _hf_logits(model_dir: Path, tokens, adapter_dir: Path | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens[:, :-1]).logits.float()


def test_peft_and_merged_exports_match_the_megatron_model_with_adapters(run, tmp_path):
    from megatron_qwen.cli.convert import main as convert
    from megatron_qwen.convert.importer import run_single_process
    from megatron_qwen.convert.verify import DEFAULT_TOLERANCE, token_batch

    _, base, _, ck = run
    adapters = ck / "iter_0000004"
    assert convert(["export-hf", "--ckpt", str(base), "--out", str(tmp_path / "hf"), "--no-progress"]) == 0
    assert convert(["export-lora", "--ckpt", str(adapters), "--out", str(tmp_path / "peft"), "--no-progress"]) == 0
    assert convert(["export-lora", "--ckpt", str(adapters), "--out", str(tmp_path / "merged"), "--merged",
                    "--no-progress"]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and len(config["target_modules"]) == 7

    tokens = token_batch(512, batch=2, seq=24)
    megatron, megatron_base = run_single_process(_megatron_logits, str(base), str(adapters), tokens)
    peft = _hf_logits(tmp_path / "hf", tokens, tmp_path / "peft")
    merged = _hf_logits(tmp_path / "merged", tokens)
    hf_base = _hf_logits(tmp_path / "hf", tokens)
    adapter_effect = float((megatron - megatron_base).abs().max())
    print(f"\nmax |logits| {float(megatron.abs().max()):.3f}; adapters move them by {adapter_effect:.3e}; "
          f"|peft - megatron| {float((peft - megatron).abs().max()):.3e}, "
          f"|merged - megatron| {float((merged - megatron).abs().max()):.3e}, "
          f"|merged - peft| {float((merged - peft).abs().max()):.3e}")
    assert adapter_effect > 100 * DEFAULT_TOLERANCE  # trained adapters: a wrong export could not pass
    assert float((hf_base - megatron_base).abs().max()) <= DEFAULT_TOLERANCE
    assert float((peft - megatron).abs().max()) <= DEFAULT_TOLERANCE
    assert float((merged - megatron).abs().max()) <= DEFAULT_TOLERANCE
    assert float((merged - peft).abs().max()) <= DEFAULT_TOLERANCE


def test_an_adapter_checkpoint_is_not_a_start_checkpoint(run):
    from megatron_qwen.checkpointing.weights import load_model_checkpoint
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.convert.importer import run_single_process
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    def load(path):
        init_distributed(ParallelConfig(), get_preset("tiny"), 64)
        load_model_checkpoint(build_model(get_preset("tiny"), ParallelConfig(), 64), path)

    with pytest.raises(KeyError, match="export-lora --merged"):
        run_single_process(load, str(run[3] / "iter_0000004"))
