"""End to end on CPU through the real entry point: learning, TP=2 and PP=2, W&B offline, stage chaining."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_helpers import metrics, tiny, train, wandb_history


@pytest.mark.slow
def test_loss_falls_and_wandb_offline_files(tmp_path: Path):
    ck = tmp_path / "ck"
    out = train(1, tiny(ck, "train.train_iters=24", "train.eval_interval=12", "logging=wandb",
                        "logging.wandb_name=tiny-test", f"logging.wandb_dir={tmp_path / 'wb'}"), tmp_path)
    m = metrics(ck / "metrics.jsonl")
    first, last = m[1]["loss"], m[24]["loss"]
    assert last < first - 1.0, f"loss did not fall: {first} -> {last}"
    for key in ("grad_norm", "lr", "tokens_per_s", "tflops_per_device", "mem_gib"):
        assert m[24][key] is not None and m[24][key] >= 0, key
    assert "step 24 | loss=" in out and "tokens_per_s=" in out
    assert (ck / "latest").read_text().strip() == "iter_0000024"
    assert (ck / "iter_0000024" / "config.yaml").is_file()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    logged = wandb_history(next(runs[0].glob("run-*.wandb")))
    assert any("loss" in h and "tokens_per_s" in h for h in logged), logged[:2]
    assert any("val_loss" in h for h in logged)
    assert len([h for h in logged if "loss" in h]) == 24


STEPS = ["train.train_iters=3", "checkpoint.save_interval=0"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """(initial weights, per-step metrics) of a one-process run. Pipeline stages draw their random init
    from per-stage seeds, so parallel runs start from these weights (a step with lr=0 leaves them as is)."""
    root = tmp_path_factory.mktemp("one")
    train(1, tiny(root / "init", "train.train_iters=1", "optim.lr=0", "optim.min_lr=0", "optim.warmup_steps=0"),
          root)
    train(1, tiny(root / "one", *STEPS), root)
    return root / "init", metrics(root / "one" / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "pp2", "cp2"])
def test_two_process_layouts_match_one_process(tmp_path: Path, layout: str, one_process):
    init, one = one_process
    train(2, tiny(tmp_path / layout, *STEPS, f"parallel={layout}", "checkpoint.init_from=checkpoint",
                  f"checkpoint.init_path={init}"), tmp_path)
    two = metrics(tmp_path / layout / "metrics.jsonl")
    for step in (1, 2, 3):
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5, abs=1e-5), step
        assert two[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step


@pytest.mark.slow
def test_stage_two_starts_from_stage_one_weights(tmp_path: Path):
    s1 = tmp_path / "s1"
    train(1, tiny(s1, "train.train_iters=8"), tmp_path)
    out = train(1, ["experiment=tiny_cpu_stage2", f"checkpoint.dir={tmp_path / 's2'}", f"checkpoint.init_path={s1}",
                    "train.train_iters=2"], tmp_path)
    assert "initializing weights from" in out and "iter_0000008" in out
    first = metrics(s1 / "metrics.jsonl")
    second = metrics(tmp_path / "s2" / "metrics.jsonl")
    # Learned weights carry over (fresh init starts near ln(512) = 6.24); fresh schedule: warmup from 0 again.
    assert second[1]["loss"] < first[1]["loss"] - 0.8
    assert second[1]["lr"] == pytest.approx(1.0e-3)
    stage2_cfg = (tmp_path / "s2" / "iter_0000002" / "config.yaml").read_text()
    assert "rope_theta: 100000.0" in stage2_cfg and "seq_length: 64" in stage2_cfg


@pytest.mark.slow
def test_stage_starts_from_a_hugging_face_checkpoint(tmp_path: Path):
    """init_from=hf imports through the conversion importer; a step with lr=0 keeps the HF weights."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from megatron_qwen.model.presets import PRESETS

    m = PRESETS["tiny"]
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups, tie_word_embeddings=True, rope_theta=1e6,
        max_position_embeddings=m.max_position_embeddings, rms_norm_eps=1e-6, torch_dtype="float32"))
    hf.save_pretrained(str(tmp_path / "hf"))
    out = train(1, tiny(tmp_path / "ck", "train.train_iters=1", "optim.lr=0", "optim.min_lr=0",
                        "optim.warmup_steps=0", "checkpoint.init_from=hf",
                        f"checkpoint.init_path={tmp_path / 'hf'}"), tmp_path)
    assert "initializing weights from" in out
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(tmp_path / "ck" / "iter_0000001"), str(tmp_path / "full.pt"))
    state = torch.load(tmp_path / "full.pt", weights_only=False)
    emb = state["embedding.word_embeddings.weight"]
    assert torch.equal(emb, hf.model.embed_tokens.weight.detach())
