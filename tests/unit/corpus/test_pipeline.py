"""The corpus pipeline end to end on the Local executor: sharding does not change tokens (against
`preprocess --mode file`), MinHash removes the planted near copy and keeps licence-sharing files, the
filters remove what they should with their reasons, a killed task is resumed alone, the blend loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_qwen.config import ClusterConfig, CorpusConfig
from megatron_qwen.corpus.pipeline import run_corpus
from megatron_qwen.data.indexed import read_documents
from tests.unit.corpus.helpers import input_records, write_input

REPO = Path(__file__).resolve().parents[3]


def corpus_config(inp: Path, out: Path, tokenizer: Path, tasks: int) -> CorpusConfig:
    return CorpusConfig(input=[str(inp)], output=str(out), tokenizer=str(tokenizer), tasks=tasks, workers=1,
                        fim_rate=0.5, seed=1234)


def shard_tokens(out: Path, tasks: int) -> dict[int, np.ndarray]:
    """{record number: tokens} over all shards of a run (each record at most once)."""
    tokens: dict[int, np.ndarray] = {}
    for rank in range(tasks):
        docs_file = out / "shards" / f"{rank:05d}.docs.jsonl"
        if not docs_file.exists():
            continue
        numbers = [json.loads(line)["record_number"] for line in docs_file.read_text().splitlines()]
        docs = read_documents(out / "shards" / f"{rank:05d}_text_document") if numbers else []
        assert len(docs) == len(numbers)
        for n, d in zip(numbers, docs):
            assert n not in tokens, "a record was written twice"
            tokens[n] = d
    return tokens


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_tokenizer_dir):
    root = tmp_path_factory.mktemp("corpus")
    inp, planted = write_input(root / "in")
    out = {}
    for tasks in (1, 4):
        cfg = corpus_config(inp, root / f"out{tasks}", small_tokenizer_dir, tasks)
        out[tasks] = (cfg, run_corpus(cfg, ClusterConfig()))
    return root, inp, planted, out


def _removed_paths(report: dict, step: str) -> dict[str, list[str]]:
    return {reason: [e["path"] for e in examples] for reason, examples in
            report["removed_examples"].get(step, {}).items()}


def test_sharding_does_not_change_tokens(runs, small_tokenizer_dir, tmp_path):
    root, inp, _, out = runs
    one, four = shard_tokens(root / "out1", 1), shard_tokens(root / "out4", 4)
    assert sorted(one) == sorted(four)
    # the reference: `preprocess --mode file` over the surviving records, in input order
    survivors = [r for r in input_records(inp) if r["record_number"] in one]
    assert len(survivors) == len(one)
    ref_input = tmp_path / "survivors.jsonl"
    ref_input.write_text("".join(json.dumps({"text": r["content"], "record_number": r["record_number"]}) + "\n"
                                 for r in survivors))
    from megatron_qwen.data.preprocess.cli import main as preprocess

    assert preprocess(["--mode", "file", "--input", str(ref_input), "--output-prefix", str(tmp_path / "ref"),
                       "--tokenizer", str(small_tokenizer_dir), "--seed", "1234", "--fim-rate", "0.5",
                       "--record-number-key", "record_number", "--no-progress"]) == 0
    reference = read_documents(tmp_path / "ref_text_document")
    assert len(reference) == len(survivors)
    fim_prefix = json.loads((small_tokenizer_dir / "tokenizer.json").read_text())
    fim_id = next(t["id"] for t in fim_prefix["added_tokens"] if t["content"] == "<|fim_prefix|>")
    fim_docs = 0
    for rec, ref in zip(survivors, reference):
        n = rec["record_number"]
        np.testing.assert_array_equal(one[n], ref)
        np.testing.assert_array_equal(four[n], ref)
        fim_docs += int(fim_id in ref)
    assert 0 < fim_docs < len(reference)  # both kinds of documents were compared
    assert out[4][1]["output_tokens"] == out[1][1]["output_tokens"] == sum(d.size for d in reference)


def test_minhash_removes_near_copy_keeps_shared_licence(runs):
    root, inp, planted, out = runs
    for tasks, (_, report) in out.items():
        kept = {r["path"] for r in input_records(inp)
                if r["record_number"] in shard_tokens(root / f"out{tasks}", tasks)}
        near = _removed_paths(report, "minhash").get("near_duplicate", [])
        exact = _removed_paths(report, "exact_dedup").get("exact_duplicate", [])
        original_of_near = planted["near_copy"].replace("fork/", "lib/")
        original_of_exact = planted["exact_copy"].replace("copy/", "lib/")
        assert len(near) == 1 and near[0] in (planted["near_copy"], original_of_near)
        assert len(exact) == 1 and exact[0] in (planted["exact_copy"], original_of_exact)
        assert (planted["near_copy"] in kept) != (original_of_near in kept)  # exactly one of the pair
        assert planted["licence_a"] in kept and planted["licence_b"] in kept
        minhash_row = next(r for r in report["funnel"] if r["step"].startswith("MinHash"))
        assert minhash_row["removed"] == {"near_duplicate": 1}


def test_filters_remove_expected_kinds_with_reasons(runs):
    _, _, planted, out = runs
    report = out[1][1]
    rules = _removed_paths(report, "rules")
    language = _removed_paths(report, "language")
    assert rules.get("max_line_length") == [planted["minified"]]
    assert rules.get("auto_generated") == [planted["generated"]]
    assert rules.get("encoded_data") == [planted["encoded"]]
    assert language.get("unknown_language") == [planted["data_file"]]
    assert language.get("language_not_kept:kotlin") == [planted["other_language"]]
    funnel = {r["step"]: r for r in report["funnel"]}
    assert funnel["code rules"]["removed"] == {"max_line_length": 1, "auto_generated": 1, "encoded_data": 1}
    assert funnel["indexed shards"]["docs_out"] == report["output_documents"]
    # the extension-less shell script was kept by its shebang; the report's plot exists
    assert Path(report["funnel_plot"]).stat().st_size > 0
    assert report["input_documents"] == funnel["language ID"]["docs_in"]


def test_blend_file_loads_with_token_weights(runs):
    from megatron_qwen.training.datasets.blend import load_blend, parse_blend

    root, _, _, out = runs
    cfg, report = out[4]
    pairs = parse_blend(load_blend(report["blend"]), check_files=True)
    assert len(pairs) == len([s for s in report["shards"] if s["documents"]])
    assert sum(w for w, _ in pairs) == report["output_tokens"]
    for w, prefix in pairs:
        assert w == sum(d.size for d in read_documents(prefix))


def test_killed_task_is_resumed_alone(runs, small_tokenizer_dir, tmp_path):
    root, inp, _, out = runs
    marker, seen = tmp_path / "died", tmp_path / "seen"
    script = (
        "import sys\n"
        "from megatron_qwen.config import ClusterConfig\n"
        "from megatron_qwen.corpus.pipeline import run_corpus\n"
        "from tests.unit.corpus.helpers import DieOnce\n"
        "from tests.unit.corpus.test_pipeline import corpus_config\n"
        f"cfg = corpus_config({str(inp)!r}, {str(tmp_path / 'out')!r}, {str(small_tokenizer_dir)!r}, 4)\n"
        f"run_corpus(cfg, ClusterConfig(), extra_write_steps=[DieOnce(2, {str(marker)!r}, {str(seen)!r})])\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def launch(log: Path) -> int:
        """Run the script in its own session; afterwards end whatever it left (datatrove's manager process
        outlives a killed parent)."""
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=f, stderr=subprocess.STDOUT,
                                    cwd=REPO, start_new_session=True)
            try:
                return proc.wait(timeout=300)
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    assert launch(tmp_path / "first.log") == 9, (tmp_path / "first.log").read_text()[-2000:]
    assert seen.read_text().split() == ["0", "1", "2"]
    done = sorted(p.name for p in (tmp_path / "out" / "logs" / "write" / "completions").iterdir())
    assert done == ["00000", "00001"]
    before = {r: (tmp_path / "out" / "shards" / f"{r:05d}_text_document.bin").stat().st_mtime_ns for r in (0, 1)}
    assert not (tmp_path / "out" / "shards" / "00002_text_document.idx").exists()
    seen.unlink()
    assert launch(tmp_path / "second.log") == 0, (tmp_path / "second.log").read_text()[-2000:]
    assert seen.read_text().split() == ["2", "3"]  # only the missing shards ran
    after = {r: (tmp_path / "out" / "shards" / f"{r:05d}_text_document.bin").stat().st_mtime_ns for r in (0, 1)}
    assert after == before
    resumed, clean = shard_tokens(tmp_path / "out", 4), shard_tokens(root / "out4", 4)
    assert sorted(resumed) == sorted(clean)  # no document lost or duplicated
    for n, tokens in clean.items():
        np.testing.assert_array_equal(resumed[n], tokens)
    assert not list((tmp_path / "out" / "shards").glob("*.tmp-*"))


def test_corpus_command_end_to_end(runs, small_tokenizer_dir, tmp_path, capsys):
    """`megatron-qwen corpus` with Hydra overrides gives the same shards as the API run with the same config."""
    from megatron_qwen.cli import main

    root, inp, _, out = runs
    assert main(["corpus", f"corpus.input=[{inp}]", f"corpus.output={tmp_path / 'cli'}",
                 f"corpus.tokenizer={small_tokenizer_dir}", "corpus.tasks=4", "corpus.fim_rate=0.5"]) == 0
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["output_tokens"] == out[4][1]["output_tokens"]
    cli, api = shard_tokens(tmp_path / "cli", 4), shard_tokens(root / "out4", 4)
    assert sorted(cli) == sorted(api)
    for n, tokens in api.items():
        np.testing.assert_array_equal(cli[n], tokens)


def test_repo_and_text_modes_match_preprocess(small_tokenizer_dir, tmp_path):
    """The writer's other modes: repositories (`repo`, FIM, split at max_tokens) and prose (`text`) give the
    tokens of `preprocess` with the same record numbers."""
    import sysconfig

    from megatron_qwen.corpus.steps import record_number
    from megatron_qwen.data.preprocess.cli import main as preprocess

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (tmp_path / "repos").mkdir()
    (tmp_path / "text").mkdir()
    ref_repos, ref_text = [], []
    for k, pkgs in enumerate((("json", "html"), ("http", "wsgiref"))):
        with open(tmp_path / "repos" / f"r{k}.jsonl", "w") as f, open(tmp_path / "text" / f"t{k}.jsonl", "w") as g:
            for line, pkg in enumerate(pkgs):
                files = [{"path": p.name, "content": p.read_text()} for p in sorted((stdlib / pkg).glob("*.py"))]
                f.write(json.dumps({"name": pkg, "files": files}) + "\n")
                ref_repos.append({"name": pkg, "files": files, "record_number": record_number(f"r{k}.jsonl", line)})
                prose = (stdlib / pkg / "__init__.py").read_text()
                g.write(json.dumps({"content": prose}) + "\n")
                ref_text.append({"text": prose, "record_number": record_number(f"t{k}.jsonl", line)})
    for mode, folder, refs, extra in (("repo", "repos", ref_repos, ["--max-tokens", "4096"]),
                                      ("text", "text", ref_text, ["--append-eod"])):
        cfg = corpus_config(tmp_path / folder, tmp_path / f"out_{mode}", small_tokenizer_dir, 2)
        cfg.mode, cfg.max_tokens = mode, 4096
        cfg.input_format = "repos" if mode == "repo" else "files"
        report = run_corpus(cfg, ClusterConfig())
        assert report["input_documents"] == 4 and not any(r.get("removed") for r in report["funnel"])
        ref_in = tmp_path / f"ref_{mode}.jsonl"
        ref_in.write_text("".join(json.dumps(r) + "\n" for r in refs))
        assert preprocess(["--mode", mode, "--input", str(ref_in), "--output-prefix", str(tmp_path / f"ref_{mode}"),
                           "--tokenizer", str(small_tokenizer_dir), "--seed", "1234", "--fim-rate", "0.5",
                           "--record-number-key", "record_number", "--no-progress", *extra]) == 0
        reference = read_documents(tmp_path / f"ref_{mode}_text_document")
        # shards in rank order hold the records of input files 0 and 1 in order: the reference order
        written = [d for r in range(2) for d in read_documents(tmp_path / f"out_{mode}" / "shards"
                                                               / f"{r:05d}_text_document")]
        assert len(written) == len(reference) > (4 if mode == "repo" else 3)
        for a, b in zip(written, reference):
            np.testing.assert_array_equal(a, b)
