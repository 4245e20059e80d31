"""Streaming safetensors I/O, pickle refusal, and the source checks that run before any conversion."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_qwen.convert.hf_files import (
    PlannedTensor,
    SafetensorsReader,
    ShardedSafetensorsWriter,
    WeightFileError,
    open_hf_weights,
)
from megatron_qwen.convert.importer import check_source
from tests.unit.convert._hf_models import make_hf_model


def test_writer_shards_are_read_by_safetensors_and_by_our_reader(tmp_path):
    tensors = {
        "a": torch.randn(10, 6).to(torch.bfloat16),
        "b": torch.randn(7),
        "c": torch.arange(24, dtype=torch.float32).view(4, 6),
        "empty": torch.empty(0, 3),
    }
    plan = [PlannedTensor(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
    writer = ShardedSafetensorsWriter(tmp_path, plan, max_shard_bytes=100)
    for k, t in tensors.items():
        writer.write(k, t)
    index = writer.close()
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not list(tmp_path.glob("*.partial"))
    for k, t in tensors.items():
        with safe_open(tmp_path / index["weight_map"][k], "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert torch.equal(f.get_tensor(k), t)
    reader = SafetensorsReader(tmp_path)
    assert torch.equal(reader.read("a"), tensors["a"])
    out = torch.empty(2, 3)
    reader.read_rows("c", 1, 3, out, cols=slice(2, 5))
    assert torch.equal(out, tensors["c"][1:3, 2:5])
    cast = torch.empty(3, 6)
    reader.read_rows("a", 4, 7, cast)  # bf16 -> fp32
    assert torch.equal(cast, tensors["a"][4:7].float())
    reader.close()


def test_writer_refuses_out_of_order_or_misshaped_tensors(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, [PlannedTensor("x", torch.float32, (2,)), PlannedTensor("y", torch.float32, (2,))])
    with pytest.raises(WeightFileError, match="expected tensor x next, got y"):
        writer.write("y", torch.zeros(2))
    with pytest.raises(WeightFileError, match=r"tensor x is torch.float32 \[3\]"):
        writer.write("x", torch.zeros(3))
    writer.write("x", torch.zeros(2))
    with pytest.raises(WeightFileError, match="only 1 of 2 tensors"):
        writer.close()


def test_reader_errors_name_file_and_tensor(tmp_path):
    save_file({"w": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    reader = SafetensorsReader(tmp_path)
    with pytest.raises(WeightFileError, match="tensor nope not found"):
        reader.info("nope")
    with pytest.raises(WeightFileError, match=r"model.safetensors: rows \[2, 9\) out of range for w"):
        reader.read_rows("w", 2, 9, torch.empty(7, 4))
    reader.close()
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(WeightFileError, match="model.safetensors: tensor w has inconsistent data_offsets"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(WeightFileError, match="model.safetensors: header length"):
        SafetensorsReader(tmp_path)


def test_pickles_are_refused_unless_allowed(tmp_path):
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightFileError, match="--allow-pickle"):
        open_hf_weights(tmp_path)
    reader = open_hf_weights(tmp_path, allow_pickle=True)
    out = torch.empty(1, 2)
    reader.read_rows("w", 1, 2, out)
    assert torch.equal(out, torch.ones(1, 2))


def test_pickles_with_code_are_refused_even_when_allowed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightFileError, match="weights_only=True"):
        open_hf_weights(tmp_path, allow_pickle=True)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "gqa2"
    make_hf_model(path, "gqa2-tied-bf16", layers=2)
    return path


def test_check_source_accepts_a_transformers_checkpoint(hf_dir):
    src = check_source(hf_dir)
    assert src.dtype == torch.bfloat16 and src.model.tie_word_embeddings and src.hf_vocab == 256
    padded = check_source(hf_dir, pad_vocab_to=96)
    assert padded.model.vocab_size == 288 and padded.hf_vocab == 256


def _rewrite(src, dst, change):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    with safe_open(src / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_check_source_names_missing_misshaped_and_unknown_tensors(hf_dir, tmp_path):
    bad = _rewrite(hf_dir, tmp_path / "missing", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(WeightFileError, match=r"missing, e.g. \['model.layers.1.self_attn.k_proj.bias'\]"):
        check_source(bad)

    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1]

    bad = _rewrite(hf_dir, tmp_path / "shape", shrink)
    with pytest.raises(WeightFileError, match=r"model.safetensors: tensor model.layers.0.mlp.up_proj.weight has shape \[143, 64\]"):
        check_source(bad)
    bad = _rewrite(hf_dir, tmp_path / "extra", lambda t: t.update({"model.layers.0.mlp.bias": torch.zeros(3)}))
    with pytest.raises(WeightFileError, match="not part of a Qwen2 model"):
        check_source(bad)


def test_tied_config_with_a_different_head_is_refused(hf_dir, tmp_path):
    def add_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()

    assert check_source(_rewrite(hf_dir, tmp_path / "same", add_head)).model.tie_word_embeddings

    def add_other_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1

    with pytest.raises(WeightFileError, match="lm_head.weight differs from model.embed_tokens.weight"):
        check_source(_rewrite(hf_dir, tmp_path / "other", add_other_head))


def test_untied_config_without_head_says_so(hf_dir, tmp_path):
    bad = _rewrite(hf_dir, tmp_path / "untied", lambda t: None)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightFileError, match="lm_head.weight is required"):
        check_source(bad)
