"""LoRA training on TP=2, PP=2, TP=2+SP and DP=2 with the distributed optimizer computes the same steps as one
process: per-step losses and the final adapters (gathered to full shape by dist_checkpointing) agree to rtol
1e-5, and the frozen base weights are bit-identical to the start everywhere.

The single-process reference run also shows the bookkeeping: its trainable parameters are exactly the adapters
and their count is the closed form rank·(in + out) per targeted linear; megatron's gradient buffers and the
optimizer hold the adapters only, and each rank's adapter count is the memory planner's. All layouts of world size 2 run in one spawn (see _equivalence.py).
"""

import pytest

from megatron_qwen.convert.importer import run_single_process
from megatron_qwen.model import memory
from megatron_qwen.model.presets import get_preset
from megatron_qwen.platform.spawn import run_workers
from tests.distributed import _equivalence as eq
from tests.distributed import _lora

RTOL = 1e-5
LAYOUTS = {
    "tp2": dict(tensor_model_parallel_size=2),
    "tp2-sp": dict(tensor_model_parallel_size=2, sequence_parallel=True),
    "pp2": dict(pipeline_model_parallel_size=2),
    # frozen weights with the sharded optimizer: its buffers and shards must skip them too
    "dp2-distopt": dict(use_distributed_optimizer=True),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-ref")
    init, final = str(root / "init"), str(root / "final")
    # in this process (megatron-core is imported once per test process anyway): no spawn for world size 1
    result = run_single_process(_lora.train_lora_layout, "tiny", eq.with_layout(), None, init, final)
    tensors = {name: eq.full_tensors(d, str(root / f"{name}.pt")) for name, d in (("init", init), ("final", final))}
    return init, tensors, result


@pytest.fixture(scope="module")
def layout_runs(reference, tmp_path_factory):
    finals = {n: str(tmp_path_factory.mktemp(n) / "final") for n in LAYOUTS}
    cases = [("tiny", eq.with_layout(**LAYOUTS[n]), reference[0], None, finals[n]) for n in LAYOUTS]
    per_rank = run_workers(2, _lora.train_lora_layouts, cases)
    return {n: ([rank[k] for rank in per_rank], finals[n]) for k, n in enumerate(LAYOUTS)}


def test_single_process_trains_only_the_adapters(reference):
    init, _, r = reference
    assert r["trainable"] and all(".lora." in n for n in r["trainable"])
    assert r["trainable_numel"] == r["formula"]  # rank·(in + out) summed over targets and layers
    assert r["grad_buffer_numel"] == r["formula"]  # megatron's DDP allocates gradients for adapters only
    assert r["optimizer_numel"] == r["formula"] and not r["frozen_in_optimizer"]
    assert r["base_count"] > 0 and r["base_unchanged"]  # in memory, after 3 steps
    assert r["losses"][-1] < r["losses"][0]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_lora_layout_matches_single_process(name, reference, layout_runs, tmp_path):
    _, ref_tensors, ref = reference
    results, final = layout_runs[name]
    losses = results[0]["losses"]
    print(f"\n[{name}] losses single {ref['losses']} layout {losses}")
    layout = memory.Layout(tp=LAYOUTS[name].get("tensor_model_parallel_size", 1),
                           pp=LAYOUTS[name].get("pipeline_model_parallel_size", 1), lora_rank=_lora.LORA.rank)
    planned = memory.stage_layers(get_preset("tiny"), layout) * memory.lora_layer_params(
        get_preset("tiny"), layout.tp, layout.lora_rank)
    for r in results:
        assert r["losses"] == pytest.approx(losses, rel=1e-12)
        assert r["base_unchanged"]
        assert r["trainable_numel"] == r["grad_buffer_numel"] == planned  # the memory planner's adapter count
    assert losses == pytest.approx(ref["losses"], rel=RTOL)
    got, want = eq.full_tensors(final, str(tmp_path / "final.pt")), ref_tensors["final"]
    assert got.keys() == want.keys()
    adapters = {k: float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in got if ".lora." in k}
    assert len(adapters) == 8  # 4 targets x (A, B), layers stacked
    worst = max(adapters, key=adapters.get)
    print(f"[{name}] worst adapter rel. diff {adapters[worst]:.2e} ({worst})")
    assert adapters[worst] <= RTOL, f"{worst} differs by {adapters[worst]:.2e}"
    # the base weights in the final checkpoint are the initial ones, bit for bit
    start = ref_tensors["init"]
    base = [k for k in start if ".lora." not in k]
    assert base and all(start[k].equal(got[k]) and start[k].equal(want[k]) for k in base)
