"""`make demo` end to end: corpus, tokenizer, preprocessing, then all three stages of the recipe (pretraining
at two context lengths, coarse and fine SFT, DPO) on CPU with TP=2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_the_recipe_and_the_loss_falls(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/demo/run_demo.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== demo finished" in proc.stdout
    # sft_fine runs 20 steps at a lower LR from the coarse result: it must fall, but not by much.
    for stage, drop in (("file_pretrain", 0.2), ("repo_pretrain", 0.2), ("sft_coarse", 0.2), ("sft_fine", 0.0),
                        ("dpo", 0.2)):
        stage_dir = out / "runs" / stage / "train"
        assert (stage_dir / "FINISHED").exists(), f"{stage} did not finish"
        rows = [json.loads(x) for x in (stage_dir / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses[-1] < losses[0] - drop, f"{stage}: loss did not fall by {drop}: {losses}"
    for stage in ("file_pretrain", "sft_coarse"):  # code benchmarks inside training (bench.* in their configs)
        ck = out / "runs" / stage / "train" / "checkpoints"
        rows = [json.loads(x) for x in (ck / "metrics.jsonl").read_text().splitlines()]
        scored = [r["step"] for r in rows if "eval/humaneval/pass@1" in r and "eval/humaneval-sl/exact_match" in r]
        assert scored and scored[-1] == rows[-1]["step"], f"{stage}: no benchmark at the end: {scored}"
        assert (ck / "eval_metrics.png").is_file()
        assert (ck / "benchmarks" / f"iter_{scored[-1]:07d}" / "humaneval" / "completions.jsonl").is_file()
    dpo = [json.loads(x) for x in (out / "runs/dpo/train/checkpoints/metrics.jsonl").read_text().splitlines()]
    accuracy = [r["rewards/accuracy"] for r in dpo if "rewards/accuracy" in r]
    assert accuracy[-1] >= 0.8, f"DPO reward accuracy stayed low: {accuracy}"
    report = json.loads((out / "data" / "code_report.json").read_text())
    assert 0.4 < report["fim_share"] < 0.6  # --fim-rate 0.5 on ~300 files
