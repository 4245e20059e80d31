"""`megatron-qwen convert` end to end, as a user runs it (separate processes, real exit codes).

import-hf at TP=2, verify at another layout (PP=2, resharded on load) passes; verify against the same
model with ONE weight element changed by 0.01 fails with exit status 1; export-hf with the tokenizer
gives a directory transformers loads and generates from exactly like the original; bad input exits 2
with a message naming the problem.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.convert._hf_models import make_hf_model

pytestmark = pytest.mark.slow  # five tool runs, ~1 minute


def run_tool(*args, expect: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "megatron_qwen", "convert", *map(str, args)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}):\n{out[-4000:]}"
    return out


def diffs(output: str) -> tuple[float, float]:
    logits = float(re.search(r"max \|logits_hf - logits_megatron\|\s+=\s+(\S+)", output).group(1))
    loss = float(re.search(r"max \|loss_hf - loss_megatron\|\s+=\s+(\S+)", output).group(1))
    return logits, loss


def test_cli_import_verify_perturbed_export(tmp_path):
    hf, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "export"
    make_hf_model(hf, "gqa7-untied")

    run_tool("import-hf", "--hf-dir", hf, "--out", ckpt, "--tp", 2, "--no-progress")
    assert not (tmp_path / "ckpt.partial").exists()

    good = run_tool("verify", "--hf-dir", hf, "--ckpt", ckpt, "--pp", 2)
    print("\n" + good)
    logits_diff, loss_diff = diffs(good)
    assert "verify OK" in good and logits_diff <= 1e-4 and loss_diff <= 1e-4

    perturbed = tmp_path / "hf-perturbed"
    perturbed.mkdir()
    (perturbed / "config.json").write_text((hf / "config.json").read_text())
    tensors = load_file(hf / "model.safetensors")
    tensors["model.layers.2.self_attn.v_proj.weight"][5, 17] += 0.01
    save_file(tensors, perturbed / "model.safetensors", metadata={"format": "pt"})
    bad = run_tool("verify", "--hf-dir", perturbed, "--ckpt", ckpt, expect=1)
    print(bad)
    logits_diff, _ = diffs(bad)
    assert "verify FAILED" in bad and "disagree" in bad and logits_diff > 1e-4

    tokenizer = os.environ.get("QWEN_TOKENIZER_DIR")
    extra = ["--tokenizer", tokenizer] if tokenizer else []
    run_tool("export-hf", "--ckpt", ckpt, "--out", out, "--max-shard-size", "300KB", "--no-progress", *extra)
    files = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert (out / "model.safetensors.index.json").is_file() and len(files) > 1
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    exported = {}
    for f in out.glob("model-*.safetensors"):
        exported.update(load_file(f))
    original = load_file(hf / "model.safetensors")
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = AutoModelForCausalLM.from_pretrained(hf)
    b = AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([[3, 141, 59, 26, 5]])
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(a.generate(prompt, **kwargs), b.generate(prompt, **kwargs))
    if tokenizer:
        assert AutoTokenizer.from_pretrained(out)("def f():")["input_ids"]

    run_tool("export-hf", "--ckpt", ckpt, "--out", out, expect=2)  # refuses to overwrite


def test_cli_bad_input_exits_2_with_a_named_cause(tmp_path):
    hf = tmp_path / "pickled"
    make_hf_model(hf, "gqa1-untied", layers=2)
    tensors = load_file(hf / "model.safetensors")
    (hf / "model.safetensors").unlink()
    torch.save(tensors, hf / "pytorch_model.bin")
    out = run_tool("import-hf", "--hf-dir", hf, "--out", tmp_path / "ckpt", expect=2)
    assert "pickled pytorch_model" in out and "--allow-pickle" in out
    out = run_tool("import-hf", "--hf-dir", hf, "--out", tmp_path / "ckpt", "--tp", 3, "--allow-pickle", expect=2)
    assert "config.json" in out and "divisible by tensor_model_parallel_size (3)" in out
