"""Every parallel layout computes the same training steps as one process (CPU, gloo, float32).

For each layout: load the reference run's initial weights, train 3 optimizer steps on the same global
batch, and compare per-step losses and every final weight with the single-process run (rtol 1e-5).
The layouts of one world size run in one spawn (one megatron-core import per process), one after another.
"""

import pytest

from megatron_qwen.platform.spawn import run_workers
from tests.distributed import _equivalence as eq

RTOL = 1e-5

LAYOUTS = {
    "tp2": ("tiny", 2, dict(tensor_model_parallel_size=2)),
    "tp2-sp": ("tiny", 2, dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    "pp2-tied": ("tiny", 2, dict(pipeline_model_parallel_size=2)),
    "pp2-vpp2-untied": ("tiny-untied", 2, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)),
    "dp2": ("tiny", 2, dict()),
    "dp2-distopt": ("tiny", 2, dict(use_distributed_optimizer=True)),
    "tp2-pp2": ("tiny-untied", 4, dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One single-process run per preset: initial weights, per-step losses, final weights."""
    refs = {}
    for preset in ("tiny", "tiny-untied"):
        root = tmp_path_factory.mktemp(f"ref-{preset}")
        init, final = str(root / "init"), str(root / "final")
        (losses,) = run_workers(1, eq.train_layout, preset, eq.with_layout(), None, init, final)
        refs[preset] = (init, final, losses)
    return refs


@pytest.fixture(scope="module")
def layout_runs(references, tmp_path_factory):
    """{layout: (per-rank losses, final weights dir)}: every layout of a world size in one spawn."""
    runs = {}
    for world in sorted({w for _, w, _ in LAYOUTS.values()}):
        names = [n for n, (_, w, _) in LAYOUTS.items() if w == world]
        finals = {n: str(tmp_path_factory.mktemp(n) / "final") for n in names}
        cases = [(LAYOUTS[n][0], eq.with_layout(**LAYOUTS[n][2]), references[LAYOUTS[n][0]][0], None, finals[n])
                 for n in names]
        per_rank = run_workers(world, eq.train_layouts, cases)
        for k, n in enumerate(names):
            runs[n] = ([rank[k] for rank in per_rank], finals[n])
    return runs


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name, references, layout_runs, tmp_path):
    preset = LAYOUTS[name][0]
    _, ref_final, ref_losses = references[preset]
    results, final = layout_runs[name]
    losses = results[0]
    print(f"\n[{name}] step  single-process        {name:<22} rel.diff")
    for step, (a, b) in enumerate(zip(ref_losses, losses)):
        print(f"[{name}] {step:>4}  {a:.10f}  {b:.10f}  {abs(a - b) / abs(a):.2e}")
    for rank_losses in results:  # every rank reports the same global loss
        assert rank_losses == pytest.approx(losses, rel=1e-12)
    assert losses == pytest.approx(ref_losses, rel=RTOL)
    assert losses[-1] < losses[0], "three steps at lr 3e-3 on a fixed batch must lower the loss"
    diffs = eq.compare_checkpoints(ref_final, final, str(tmp_path))
    worst = max(diffs, key=diffs.get)
    print(f"[{name}] {len(diffs)} tensors, worst final-weight rel. diff {diffs[worst]:.2e} ({worst})")
    assert diffs[worst] <= RTOL, f"{worst} differs by {diffs[worst]:.2e}"
