"""Resume with the distributed optimizer (torch Adam on CPU) through the real entry point.

One uninterrupted DP=2 run saves at steps 2, 4 and 6; a copy of its checkpoint dir cut back to step 2
(`latest` -> iter_0000002, later iterations deleted) is resumed and must log the same per-step losses.
The same step-2 checkpoint also resumes at another layout (DP=1, TP=2): distributed-optimizer state in
the fully_reshardable format loads at any TP/PP/DP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _train_helpers import metrics, tiny, train

STEPS = ["train.train_iters=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0"]
DISTOPT = "parallel=dp_distopt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """An uninterrupted DP=2 distributed-optimizer run of 6 steps, keeping every checkpoint."""
    root = tmp_path_factory.mktemp("distopt_reference")
    train(2, tiny(root / "ck", *STEPS, DISTOPT), root)
    return root / "ck", metrics(root / "ck" / "metrics.jsonl")


def _cut_back_to_step2(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.glob("iter_*"):
        if p.name != "iter_0000002":
            shutil.rmtree(p)
    (dst / "latest").write_text("iter_0000002\n")
    (dst / "metrics.jsonl").unlink()  # only the resumed run's steps from here on
    return dst


def _resume(tmp_path: Path, reference, world: int, *extra: str) -> tuple[str, dict[int, dict], dict[int, dict]]:
    src, ref = reference
    ck = _cut_back_to_step2(src, tmp_path / "ck")
    out = train(world, tiny(ck, *STEPS, *extra), tmp_path)
    assert f"resuming from {ck / 'iter_0000002'}" in out
    resumed = metrics(ck / "metrics.jsonl")
    assert sorted(resumed) == [3, 4, 5, 6]
    return out, resumed, ref


@pytest.mark.slow
def test_distopt_dp2_resume_gives_identical_losses(tmp_path: Path, reference):
    _, resumed, ref = _resume(tmp_path, reference, 2, DISTOPT)
    for step in range(3, 7):
        assert resumed[step]["loss"] == ref[step]["loss"], (step, resumed[step], ref[step])
        assert resumed[step]["grad_norm"] == ref[step]["grad_norm"], step
        assert resumed[step]["lr"] == ref[step]["lr"]


@pytest.mark.slow
@pytest.mark.parametrize("world, layout", [(1, [DISTOPT]), (2, ["parallel=tp2", "parallel.use_distributed_optimizer=true"])],
                         ids=["dp1", "tp2"])
def test_distopt_dp2_checkpoint_resumes_at_another_layout(tmp_path: Path, reference, world, layout):
    out, resumed, ref = _resume(tmp_path, reference, world, *layout)
    assert "RNG states not restored" in out
    for step in range(3, 7):
        assert resumed[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-5), step
