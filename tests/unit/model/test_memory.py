"""The memory planner against real tensors: a TP=2 CPU run of the tiny preset (fp32).

Weights, gradients (DDP main grads) and Adam state equal the planner's bytes exactly on every rank;
the activation estimate is within 20% of what the forward saved for backward (saved-tensor hooks,
counted once per storage, parameters excluded). Also: the 7B (32K) and 32B (128K) example layouts fit
in 80 GB, and a layout that cannot fit is reported as not fitting.
"""

import dataclasses

import pytest

from megatron_qwen.model import memory
from megatron_qwen.model.presets import get_preset
from megatron_qwen.platform.spawn import run_workers
from tests.unit.model import _workers as w

SEQ, MICRO = 256, 2


def test_planner_matches_real_tensors():
    results = run_workers(2, w.measure_memory, 2, SEQ, MICRO)
    lay = memory.Layout(tp=2, distributed_optimizer=False, micro_batch_size=MICRO, num_microbatches=1,
                        params_dtype="fp32", spec="local")
    p = memory.plan(get_preset("tiny-untied"), lay, SEQ)
    for r in results:
        ratio = p.activations / r["activations"]
        print(f"\nrank {r['tp_rank']}: params {r['params']} (plan {p.params}); weights {r['weights']} B "
              f"(plan {p.weights}); grads {r['gradients']} (plan {p.gradients}); optimizer {r['optimizer']} "
              f"(plan {p.optimizer}); activations {r['activations']} (plan {p.activations}, ratio {ratio:.3f})")
        assert (r["params"], r["weights"], r["gradients"], r["optimizer"]) == (
            p.params, p.weights, p.gradients, p.optimizer)
        assert 0.8 <= ratio <= 1.2


EXAMPLES = {
    # name: (preset, sequence length, layout) — the layouts README and examples/ recommend
    "7b-32k": ("qwen2.5-coder-7b", 32768, memory.Layout(
        tp=4, cp=2, dp=4, sequence_parallel=True, recompute="selective", num_microbatches=16)),
    "7b-128k": ("qwen2.5-coder-7b", 131072, memory.Layout(
        tp=4, cp=4, dp=2, sequence_parallel=True, recompute="selective", num_microbatches=16)),
    "32b-32k": ("qwen2.5-coder-32b", 32768, memory.Layout(
        tp=8, pp=2, cp=2, dp=2, sequence_parallel=True, recompute="selective", num_microbatches=16)),
    "32b-128k": ("qwen2.5-coder-32b", 131072, memory.Layout(
        tp=8, cp=8, dp=1, sequence_parallel=True, recompute="selective", num_microbatches=32)),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_layouts_fit_80gb(name):
    preset, seq, lay = EXAMPLES[name]
    p = memory.plan(get_preset(preset), lay, seq)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.as_gb().items() if k not in ("stage", "params")))
    assert memory.fits(p, 80)


def test_unsharded_32b_at_128k_does_not_fit():
    p = memory.plan(get_preset("qwen2.5-coder-32b"), memory.Layout(tp=8), 131072)
    assert not memory.fits(p, 80)


def test_plan_tool_exit_status(capsys):
    from megatron_qwen.cli import plan as tool

    ok = ["--preset", "qwen2.5-coder-7b", "--seq-length", "32768", "--tp", "4", "--cp", "2", "--dp", "4", "--sp",
          "--recompute", "selective"]
    assert tool.main(ok) == 0 and "fits" in capsys.readouterr().out
    assert tool.main(["--preset", "qwen2.5-coder-32b", "--seq-length", "131072", "--tp", "8"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert tool.main(["--preset", "qwen2.5-coder-7b", "--seq-length", "131072", "--gpus", "32", "--sp",
                      "--recompute", "selective"]) == 0
    assert "tp4 pp1 cp4 dp2" in capsys.readouterr().out


def test_lora_plan_freezes_the_base():
    """LoRA keeps the weights' bytes but drops their gradients and optimizer state; 32B LoRA SFT at 8K fits
    one 8-GPU node of 80 GB GPUs (tp4 dp2, SP, selective recompute), which full SFT does not."""
    m = get_preset("qwen2.5-coder-32b")
    full = memory.Layout(tp=4, dp=2, sequence_parallel=True, recompute="selective")
    lora = dataclasses.replace(full, lora_rank=16)
    p_full, p_lora = memory.plan(m, full, 8192), memory.plan(m, lora, 8192)
    adapters = memory.stage_layers(m, lora) * memory.lora_layer_params(m, 4, 16)
    assert p_lora.params == p_full.params + adapters
    assert p_lora.gradients == adapters * 4 and p_lora.optimizer == adapters * 12 // 2
    assert p_lora.activations > p_full.activations  # adapters save their (gathered) inputs and z
    assert memory.fits(p_lora) and not memory.fits(p_full)
    assert not memory.search(m, 8192, 8, full) and memory.search(m, 8192, 8, lora)
