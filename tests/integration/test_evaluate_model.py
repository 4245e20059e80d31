"""`megatron-qwen evaluate --checkpoint/--hf` end to end on a tiny random model with a small tokenizer.

The numbers are near zero (a random model); what is checked: the mechanics (prompts and completions
saved, the greedy completions are the in-process generator's, pass@k with sampling, perplexity equals a
transformers forward on the same weights, FIM exact match on documents split after <|fim_middle|>), and
that the saved completions re-scored with `evaluate --samples` give the same numbers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_qwen.cli.evaluate import main
from megatron_qwen.convert.importer import import_hf, run_single_process
from tests.integration._tiny_model import make_tiny_hf


def _evaluate(argv: list[str]) -> int:
    return run_single_process(main, argv)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, small_tokenizer_dir):
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    root = tmp_path_factory.mktemp("evaluate_model")
    tok = load_tokenizer(small_tokenizer_dir)
    hf = make_tiny_hf(root / "hf", small_tokenizer_dir)
    import_hf(hf, root / "ckpt", show_progress=False)
    return root, tok


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_humaneval_sampled_pass_at_k_and_rescore(tiny, bench_sandbox_available):
    root, _ = tiny
    out = root / "he"
    argv = ["--checkpoint", str(root / "ckpt"), "--tokenizer", str(root / "hf"), "--benchmark", "humaneval",
            "--limit", "2", "--n-samples", "3", "--temperature", "0.8", "--top-p", "0.95", "--k", "1,2",
            "--max-tokens", "12", "--output", str(out), "--workers", "2"]
    assert _evaluate(argv) == 0
    completions = _rows(out / "completions.jsonl")
    assert [r["task_id"] for r in completions] == ["HumanEval/0"] * 3 + ["HumanEval/1"] * 3
    assert all(r["prompt"].startswith("from typing import List") for r in completions)
    assert len({r["completion"] for r in completions}) > 1  # sampled
    results = json.loads((out / "results.json").read_text())
    assert results["n_tasks"] == 2 and results["n_samples"] == 6 and set(results["pass_at_k"]) == {"pass@1", "pass@2"}
    # The same file scored without a model gives the same numbers.
    from megatron_qwen.codebench.cli import main as score_main

    assert score_main(["--samples", str(out / "completions.jsonl"), "--k", "1,2", "--output", str(root / "rescored"),
                       "--workers", "2"]) == 0
    rescored = json.loads((root / "rescored" / "results.json").read_text())
    assert rescored["pass_at_k"] == results["pass_at_k"] and rescored["per_task"] == results["per_task"]


def test_single_line_infilling_greedy_equals_generator(tiny, bench_sandbox_available):
    """--hf, greedy: the saved completions are exactly what the in-process Generator produces."""
    root, tok = tiny
    out = root / "sl"
    argv = ["--hf", str(root / "hf"), "--benchmark", "humaneval-sl", "--limit", "3", "--max-tokens", "8",
            "--k", "1", "--output", str(out), "--workers", "2"]
    assert _evaluate(argv) == 0
    completions = _rows(out / "completions.jsonl")
    assert len(completions) == 3 and all(r["prompt"].startswith("<|fim_prefix|>") for r in completions)

    def direct():
        from megatron_qwen.codebench.model_eval import benchmark_prompts
        from megatron_qwen.eval.generate import Generator, ensure_distributed, load_model
        from megatron_qwen.model.generation import SamplingParams

        ensure_distributed()
        loaded = load_model(checkpoint=root / "ckpt")
        gen = Generator(loaded.chunks, tok, vocab_size=loaded.vocab_size)
        rows = benchmark_prompts("humaneval-sl", None, 3)
        ids = gen.encode(rows[0][1])
        assert ids[0] == tok.token_id("<|fim_prefix|>") and tok.token_id("<|fim_middle|>") == ids[-1]
        params = SamplingParams(max_tokens=8, stop=("\n",), stop_ids=frozenset({tok.eod}))
        return [g.text for g in gen.generate([p for _, p, _ in rows], params)]

    assert [r["completion"] for r in completions] == run_single_process(direct)
    results = json.loads((out / "results.json").read_text())
    assert results["n_tasks"] == 3 and "exact_match" in results


def test_perplexity_and_fim_exact_match_on_a_preprocessed_split(tiny):
    """The split comes from `megatron-qwen preprocess --mode file --fim-rate 1` (every document PSM or SPM)."""
    from transformers import AutoModelForCausalLM

    from megatron_qwen.cli import main as cli
    from megatron_qwen.data.indexed import read_documents

    root, tok = tiny
    texts = ["def add(a, b):\n    return a + b\n", "import json\n\nprint(json.dumps({'a': 1}))\n",
             "class Point:\n    def __init__(self, x):\n        self.x = x\n"]
    (root / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert cli(["preprocess", "--mode", "file", "--input", str(root / "code.jsonl"), "--output-prefix",
                str(root / "split"), "--tokenizer", str(root / "hf"), "--fim-rate", "1.0", "--workers", "1"]) == 0
    prefix = root / "split_text_document"
    docs = [d.tolist() for d in read_documents(prefix)]
    middle = tok.token_id("<|fim_middle|>")
    assert len(docs) == 3 and all(middle in d for d in docs)

    out = root / "ppl"
    assert _evaluate(["--checkpoint", str(root / "ckpt"), "--tokenizer", str(root / "hf"), "--benchmark", "perplexity",
                      "--data", str(prefix), "--output", str(out)]) == 0
    got = json.loads((out / "results.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(str(root / "hf"), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            logits = hf(torch.tensor([d])).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(d[1:]), reduction="sum").item()
            count += len(d) - 1
    assert got["n_documents"] == 3 and got["n_tokens"] == count
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)

    out = root / "fim"
    assert _evaluate(["--checkpoint", str(root / "ckpt"), "--tokenizer", str(root / "hf"), "--benchmark", "fim-em",
                      "--data", str(prefix), "--output", str(out)]) == 0
    got = json.loads((out / "results.json").read_text())
    records = _rows(out / "samples.jsonl")
    # The reference of each document: what follows <|fim_middle|>, up to <|endoftext|>.
    want = [tok.decode(d[d.index(middle) + 1 : d.index(tok.eod, d.index(middle))]) for d in docs]
    assert got["n_tasks"] == 3 and [r["reference"] for r in records] == want
    assert all(r["prompt"].endswith("<|fim_middle|>") for r in records)
    assert got["exact_match"] == sum(r["completion"] == r["reference"] for r in records) / 3


def test_bad_input_is_one_line_exit_2(tiny, capsys):
    root, _ = tiny
    assert main(["--checkpoint", str(root / "ckpt"), "--benchmark", "perplexity", "--output", str(root / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--data" in err and "\n" not in err


def test_crosscodeeval_file_prompts_and_rescore(tiny):
    """A user-supplied repository-level file: the prompt is the cross-file context as comments + the left
    context; exact match and edit similarity, equal when the saved completions are scored again."""
    from megatron_qwen.codebench.cli import main as score_main
    from megatron_qwen.codebench.crosscodeeval import read_crosscodeeval, render_left_context

    root, _ = tiny
    rows = [{"metadata": {"task_id": f"repo/t{i}"}, "prompt": f"import util\n\nx = util.helper({i}", "right_context": ")\n",
             "groundtruth": ")", "crossfile_context": {"list": [{"filename": "util.py", "retrieved_chunk": "def helper(n):\n    return n"}]}}
            for i in range(2)]
    problems = root / "cceval.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "cceval"
    assert _evaluate(["--checkpoint", str(root / "ckpt"), "--tokenizer", str(root / "hf"), "--benchmark", "crosscodeeval",
                      "--problems", str(problems), "--max-tokens", "6", "--output", str(out)]) == 0
    completions = _rows(out / "completions.jsonl")
    assert [r["prompt"] for r in completions] == [render_left_context(t) for t in read_crosscodeeval(problems)]
    results = json.loads((out / "results.json").read_text())
    assert score_main(["--samples", str(out / "completions.jsonl"), "--benchmark", "crosscodeeval", "--problems",
                       str(problems), "--output", str(root / "cceval-rescored")]) == 0
    rescored = json.loads((root / "cceval-rescored" / "results.json").read_text())
    assert (rescored["exact_match"], rescored["edit_similarity"]) == (results["exact_match"], results["edit_similarity"])
