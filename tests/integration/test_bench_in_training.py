"""Code benchmarks inside training (`bench.*`), through the real entry point at TP=2 over gloo.

Two ranks train the tiny model for 4 steps and run HumanEval and single-line infilling (3 problems each,
greedy, executed in the sandbox) at steps 2 and 4. Checked: the `eval/<benchmark>/<metric>` records in
metrics.jsonl and the plot beside it; the prompts and completions saved per step; and that the completions
generated inside training at step 4 are exactly what `megatron-qwen evaluate` generates offline from the
checkpoint saved at step 4 (one process), with the same scores — the in-training loop evaluates the weights
being trained, under the training layout — and that the run's losses equal those of a run without
benchmarks. The scores themselves are near zero (a toy model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _train_helpers import metrics, tiny, train

STEPS = ["train.train_iters=4", "checkpoint.save_interval=0", "data.eod_token_id=600"]
# The tiny random HF model of _tiny_model.py as the start weights: a random model's greedy completions are
# varied (a freshly initialized megatron model repeats one token), so two steps of training change them.
TINY_HF = ["model.vocab_size=640", "model.num_layers=2", "model.ffn_hidden_size=128", "model.rope_theta=10000.0",
           "model.max_position_embeddings=2048", "checkpoint.init_from=hf"]
BENCH = ["bench.benchmarks=[humaneval,humaneval-sl]", "bench.limit=3", "bench.max_tokens=16", "bench.interval=2"]


def _completions(path: Path) -> list[tuple[str, str]]:
    return [(r["task_id"], r["completion"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
def test_benchmarks_inside_training_equal_an_offline_evaluation(tmp_path, small_tokenizer_dir, bench_sandbox_available):
    from megatron_qwen.cli.evaluate import main as evaluate
    from megatron_qwen.convert.importer import run_single_process
    from tests.integration._tiny_model import make_tiny_hf

    hf = make_tiny_hf(tmp_path / "hf", small_tokenizer_dir)
    ck = tmp_path / "ck"
    train(2, tiny(ck, "parallel=tp2", *STEPS, *TINY_HF, f"checkpoint.init_path={hf}", *BENCH,
                  f"bench.tokenizer={small_tokenizer_dir}"), tmp_path)
    rows = [json.loads(line) for line in (ck / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in rows if any(k.startswith("eval/") for k in r)}
    assert sorted(scored) == [2, 4], scored
    for record in scored.values():
        assert {"eval/humaneval/pass@1", "eval/humaneval-sl/pass@1", "eval/humaneval-sl/exact_match"} <= set(record)
    assert (ck / "eval_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics(ck / "metrics.jsonl")[4]["loss"] < metrics(ck / "metrics.jsonl")[1]["loss"]  # it trained between
    inside = ck / "benchmarks" / "iter_0000004" / "humaneval"
    offline = tmp_path / "offline"
    code = run_single_process(evaluate, ["--checkpoint", str(ck / "iter_0000004"), "--tokenizer", str(small_tokenizer_dir),
                                         "--benchmark", "humaneval", "--limit", "3", "--max-tokens", "16", "--k", "1",
                                         "--output", str(offline)])
    assert code == 0
    assert _completions(inside / "completions.jsonl") == _completions(offline / "completions.jsonl")
    ours = json.loads((inside / "results.json").read_text())
    theirs = json.loads((offline / "results.json").read_text())
    assert ours["pass_at_k"] == theirs["pass_at_k"] and ours["status_counts"] == theirs["status_counts"]
    assert scored[4]["eval/humaneval/pass@1"] == ours["pass_at_k"]["pass@1"]
    # generation left training as it was: a run without benchmarks has the same losses, bit for bit
    plain = tmp_path / "plain"
    train(2, tiny(plain, "parallel=tp2", *STEPS, *TINY_HF, f"checkpoint.init_path={hf}"), tmp_path)
    assert {s: r["loss"] for s, r in metrics(plain / "metrics.jsonl").items()} == {
        s: r["loss"] for s, r in metrics(ck / "metrics.jsonl").items()}
    # step 2's completions came from other weights (two more steps were trained since): the comparison above
    # tells the weights of step 4 from older ones
    assert _completions(ck / "benchmarks" / "iter_0000002" / "humaneval" / "completions.jsonl") != _completions(
        inside / "completions.jsonl")
