#!/usr/bin/env python
"""Preprocessing throughput on the Python standard library's .py files, next to the encoders' own limits.

Why it exists: issue 14 sets targets relative to gigatoken's raw `encode_batch` measured in the same run:
`plain` end to end >= 0.5x that limit on 2 workers, `file` (FIM 50%) and `repo` >= 0.35x; start-up
(interpreter, imports, tokenizer load, exactness probes, workers ready) <= 2 s; a whole `plain` run >= 8x
faster than Megatron-LM's tools/preprocess_data.py with 2 workers. The corpus is one JSONL record per
stdlib .py file; for `repo`, files are grouped by directory (cut into repositories of --repo-bytes).
Figures printed:
  limits      gigatoken encode_batch (all threads; its first, cold call and the best warm one), tiktoken
              (--workers threads), Hugging Face `tokenizers` encode_batch; same texts, no I/O
  first pass  gigatoken alone in a fresh process, 1 MB batches from --workers threads (each encoding on its
              own thread, as the pipeline does, or handing them to gigatoken's pool), timed once: the faster
              is the reference for a first pass over the corpus, `x 1st` (its pre-token cache starts empty; the
              "best call" limit re-encodes texts it has already seen)
  per mode    a fresh `megatron-qwen preprocess` process each: work phase (read, decode, build documents,
              encode, write .bin/.idx, rename) in tokens/s and as a share of the gigatoken limit; start-up
              (its wall time minus the work phase); peak RSS; where the work phase's time went
  megatron    with --megatron-lm DIR: the wall time of its tools/preprocess_data.py on the same plain run,
              and whether the outputs are byte-identical
  steady      each mode on the corpus repeated --scale times: its rate with the encoder's cache warm (the
              regime of a long shard, and of the best-call limit) and its peak RSS (bounded by chunks, not size)

    .venv/bin/python benchmarks/preprocess.py --tokenizer ../shared/fixtures/qwen2.5-coder-tokenizer
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"plain": 0.5, "file": 0.35, "repo": 0.35}
MODE_FLAGS = {"plain": ["--append-eod"], "text": [], "file": ["--fim-rate", "0.5", "--fim-spm-rate", "0.5"],
              "repo": ["--fim-rate", "0.5", "--repo-file-order", "dependency", "--max-tokens", "32768"]}


def stdlib_files(root: Path) -> list[tuple[str, str]]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            out.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def write_corpora(files: list[tuple[str, str]], out: Path, repo_bytes: int) -> tuple[Path, Path, int]:
    files_jsonl, repos_jsonl = out / "files.jsonl", out / "repos.jsonl"
    with open(files_jsonl, "w", encoding="utf-8") as f:
        for path, text in files:
            f.write(json.dumps({"text": text, "path": path}) + "\n")
    by_dir: dict[str, list[dict]] = defaultdict(list)
    for path, text in files:
        by_dir[path.rsplit("/", 1)[0] if "/" in path else "_root"].append({"path": path, "content": text})
    repos = []
    for d, entries in by_dir.items():
        group, size = [], 0
        for e in entries:
            group.append(e)
            size += len(e["content"])
            if size >= repo_bytes:
                repos.append((d, group))
                group, size = [], 0
        if group:
            repos.append((d, group))
    with open(repos_jsonl, "w", encoding="utf-8") as f:
        for k, (d, group) in enumerate(repos):
            f.write(json.dumps({"name": f"cpython/{d}#{k}", "files": group}) + "\n")
    return files_jsonl, repos_jsonl, len(repos)


def _rate(fn, texts: list[str], repeat: int) -> tuple[float, float]:
    """(first call, best call) in tokens/s of fn(texts) -> number of tokens."""
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn(texts)
        rates.append(n / (time.perf_counter() - t))
    return rates[0], max(rates)


def encoder_limits(tokenizer_dir: str, texts: list[str], workers: int, repeat: int) -> dict:
    """Raw batch encoding of the corpus by each library, built from the same files (no I/O, no documents)."""
    from megatron_qwen.data.tokenizer.fast_encoder import build_tiktoken_encoder
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    tok = load_tokenizer(tokenizer_dir, fast=False)  # the reference encoder and the files, no fast path
    import gigatoken
    from gigatoken.gigatoken_rs import load_hf_json

    giga = gigatoken.Tokenizer(load_hf_json(tok.files.spec_json()))
    giga.encode_batch(["warm up: imports awkward and starts the thread pool"] * 128)  # the first timed call: cold cache
    tik = build_tiktoken_encoder(tok.files)
    tik.threads = workers
    hf = tok._hf_raw._tok
    return {
        "gigatoken": _rate(lambda x: len(giga.encode_batch(x).layout.content), texts, repeat),
        "tiktoken": _rate(lambda x: sum(a.size for a in tik.encode_batch(x)), texts, repeat),
        "hf": _rate(lambda x: sum(len(e.ids) for e in hf.encode_batch(x, add_special_tokens=False)), texts, 1),
    }


FIRST_PASS = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from megatron_qwen.data.tokenizer.qwen import load_tokenizer
enc = load_tokenizer(sys.argv[1])._encoder
chunks, cur, size = [], [], 0
for line in open(sys.argv[2], encoding="utf-8"):
    cur.append(json.loads(line)["text"]); size += len(cur[-1])
    if size >= 1 << 20:
        chunks.append(cur); cur, size = [], 0
chunks.append(cur)
t = time.perf_counter()
with ThreadPoolExecutor(int(sys.argv[3])) as pool:
    n = sum(pool.map(lambda c: enc.encode_flat(c, None if sys.argv[4] == "pool" else False)[0].size, chunks))
print(enc.name, n / (time.perf_counter() - t))
"""


def first_pass_rate(tokenizer_dir: str, files_jsonl: Path, workers: int, how: str) -> float:
    """Tokens/s of gigatoken's first pass over the corpus in a fresh process (see the module docstring); `how`:
    "own" = each thread encodes on itself (the pipeline's way), "pool" = the threads hand batches to its pool."""
    out = subprocess.run([sys.executable, "-c", FIRST_PASS, tokenizer_dir, str(files_jsonl), str(workers), how],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    name, rate = out.stdout.split()
    if name != "gigatoken":
        raise RuntimeError(f"the fast path is {name}, not gigatoken: {out.stderr[-2000:]}")
    return float(rate)


def run_process(cmd: list[str]) -> float:
    """Wall seconds of a child process (an error with its stderr if it fails)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def run_mode(mode: str, inp: Path, prefix: Path, tokenizer: str, workers: int) -> dict:
    report = prefix.with_name(prefix.name + "_report.json")
    wall = run_process([sys.executable, "-m", "megatron_qwen", "preprocess", "--mode", mode, "--input",
                                str(inp), "--output-prefix", str(prefix), "--tokenizer", tokenizer, "--workers",
                                str(workers), "--no-progress", "--report", str(report), *MODE_FLAGS[mode]])
    r = json.loads(report.read_text())
    return {**r, "wall_s": wall, "outside_work_s": wall - r["elapsed_s"]}  # the report has its peak RSS


def megatron_run(megatron_lm: Path, inp: Path, prefix: Path, tokenizer: str, workers: int) -> float:
    script = megatron_lm / "tools" / "preprocess_data.py"
    return run_process([sys.executable, str(script), "--input", str(inp), "--output-prefix", str(prefix),
                              "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
                              "--workers", str(workers), "--append-eod", "--json-keys", "text"])


def compare_outputs(a: Path, b: Path) -> str:
    """How two indexed datasets compare: identical files, or identical tokens with a different index."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if all(filecmp.cmp(f"{a}.{e}", f"{b}.{e}", shallow=False) for e in ("bin", "idx")):
        return "byte-identical .bin and .idx"
    da, db = IndexedDataset(str(a)), IndexedDataset(str(b))
    same_tokens = filecmp.cmp(f"{a}.bin", f"{b}.bin", shallow=False)
    empty = int((da.sequence_lengths == 0).sum()), int((db.sequence_lengths == 0).sum())
    nonempty = [s[s > 0] for s in (da.sequence_lengths, db.sequence_lengths)]
    same_lengths = len(nonempty[0]) == len(nonempty[1]) and (nonempty[0] == nonempty[1]).all()
    return (f".bin {'byte-identical' if same_tokens else 'DIFFERENT'}; documents {len(da.document_indices) - 1} vs "
            f"{len(db.document_indices) - 1} (empty sequences {empty[0]} vs {empty[1]}); non-empty sequence "
            f"lengths {'identical' if same_lengths else 'DIFFERENT'}")


def scaled_corpus(src: Path, out: Path, times: int) -> Path:
    with open(out, "wb") as f:
        for _ in range(times):
            with open(src, "rb") as s:
                f.write(s.read())
    return out


def steady_state(args, figures: dict, files_jsonl: Path, repos_jsonl: Path, tmp: Path, giga: float) -> None:
    """Each mode on the corpus repeated args.scale times: its rate once the encoder's cache is warm (the
    regime of a long shard, comparable with the best-call limit) and its peak memory against the 1x run's."""
    print(f"\nsteady state: each mode on the corpus repeated {args.scale}x (after the first pass the encoder's "
          f"pre-token cache is warm, as in a long shard; the best-call limit is warm too)")
    print(f"{'mode':6} {'MB in':>6} {'tokens':>9} {'work s':>7} {'tokens/s':>9} {'x giga':>7} {'target':>7} "
          f"{'RSS MB':>7} {'1x RSS':>7}")
    figures["steady"] = {"scale": args.scale}
    big = {}
    for mode in args.modes:
        src = repos_jsonl if mode == "repo" else files_jsonl
        if src not in big:
            big[src] = scaled_corpus(src, tmp / f"big_{src.name}", args.scale)
        r = run_mode(mode, big[src], tmp / f"big_{mode}", args.tokenizer, args.workers)
        for f in tmp.glob(f"big_{mode}_*"):
            f.unlink()  # outputs of a 10x run are ~160 MB each
        ratio, target = r["tokens_per_s"] / giga, TARGETS.get(mode)
        verdict = "" if target is None else f"{target:>5.2f}x {'ok' if ratio >= target else 'LOW'}"
        print(f"{mode:6} {big[src].stat().st_size / 1e6:>6.0f} {r['tokens']:>9} {r['elapsed_s']:>7.2f} "
              f"{r['tokens_per_s'] / 1e6:>8.2f}M {ratio:>7.2f} {verdict:>7} {r['peak_rss_mb']:>7} "
              f"{figures.get(mode, {}).get('peak_rss_mb', '-'):>7}", flush=True)
        figures["steady"][mode] = {"tokens_per_s": r["tokens_per_s"], "ratio_to_gigatoken": ratio,
                                   "peak_rss_mb": r["peak_rss_mb"], "elapsed_s": r["elapsed_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=os.environ.get("QWEN_TOKENIZER_DIR", "../shared/fixtures/qwen2.5-coder-tokenizer"))
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5,
                   help="calls per encoder limit (the first is cold; the best of five reaches the warm plateau, "
                        "three can miss it)")
    p.add_argument("--modes", nargs="+", default=["plain", "file", "repo", "text"])
    p.add_argument("--repo-bytes", type=int, default=1_000_000)
    p.add_argument("--megatron-lm", type=Path, help="a Megatron-LM checkout: time its tools/preprocess_data.py")
    p.add_argument("--scale", type=int, default=10,
                   help="steady state and peak memory: each mode on the corpus repeated N times (0: skip)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    files = stdlib_files(Path(args.stdlib))
    texts = [t for _, t in files]
    figures: dict = {"load": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files_jsonl, repos_jsonl, n_repos = write_corpora(files, tmp, args.repo_bytes)
        print(f"corpus: {len(files)} files, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB from {args.stdlib}; "
              f"{n_repos} repositories for repo mode; load average {figures['load'][0]:.2f}", flush=True)
        limits = encoder_limits(args.tokenizer, texts, args.workers, args.repeat)
        giga = limits["gigatoken"][1]
        print("\nencoder limits (batch, no I/O)      first call   best call")
        for name, (first, best) in limits.items():
            print(f"  {name:10}                       {first / 1e6:8.2f}M  {best / 1e6:8.2f}M tokens/s"
                  f"   (gigatoken best = {giga / best:.1f}x)")
        figures["limits"] = limits
        passes = {how: first_pass_rate(args.tokenizer, files_jsonl, args.workers, how) for how in ("own", "pool")}
        for how, label in (("own", "each encodes on its own thread"), ("pool", "into its thread pool")):
            print(f"  gigatoken first pass: 1 MB batches from {args.workers} threads, {label:30} "
                  f"{passes[how] / 1e6:8.2f}M tokens/s   ({passes[how] / giga:.2f}x the best call)")
        first_pass = max(passes.values())
        print("  (a first pass starts with an empty pre-token cache; the faster of the two is `x 1st` below)")
        figures["first_pass"], figures["first_passes"] = first_pass, passes
        print(f"\n{'mode':6} {'tokens':>9} {'work s':>7} {'tokens/s':>9} {'x giga':>7} {'target':>7} {'x 1st':>6} "
              f"{'startup':>8} {'wall':>6} {'RSS MB':>7}  profile (s; worker stages summed over workers)")
        for mode in args.modes:
            r = run_mode(mode, repos_jsonl if mode == "repo" else files_jsonl, tmp / mode, args.tokenizer, args.workers)
            ratio = r["tokens_per_s"] / giga
            target = TARGETS.get(mode)
            verdict = "" if target is None else (f"{target:>5.2f}x {'ok' if ratio >= target else 'LOW'}")
            print(f"{mode:6} {r['tokens']:>9} {r['elapsed_s']:>7.2f} {r['tokens_per_s'] / 1e6:>8.2f}M {ratio:>7.2f} "
                  f"{verdict:>7} {r['tokens_per_s'] / first_pass:>6.2f} {r['outside_work_s']:>7.2f}s {r['wall_s']:>5.2f}s "
                  f"{r['peak_rss_mb']:>7}  "
                  + ", ".join(f"{k} {v}" for k, v in r["profile_s"].items()), flush=True)
            figures[mode] = {k: r[k] for k in ("tokens", "documents", "elapsed_s", "tokens_per_s", "startup_s",
                                               "outside_work_s", "wall_s", "peak_rss_mb", "profile_s", "encoder")}
            figures[mode]["ratio_to_gigatoken"] = ratio
        print("x 1st: the mode's rate over gigatoken's first pass; startup: the process's wall time minus its work "
              "phase (interpreter, imports, tokenizer load, probes, workers, exit)")
        if args.megatron_lm:
            wall = megatron_run(args.megatron_lm, files_jsonl, tmp / "megatron", args.tokenizer, args.workers)
            ours = figures.get("plain", {}).get("wall_s") or run_mode("plain", files_jsonl, tmp / "plain",
                                                                      args.tokenizer, args.workers)["wall_s"]
            same = compare_outputs(tmp / "megatron_text_document", tmp / "plain_text_document")
            print(f"\nMegatron-LM tools/preprocess_data.py, {args.workers} workers: {wall:.2f} s wall; ours "
                  f"{ours:.2f} s: {wall / ours:.1f}x faster (target 8x)\n  Megatron-LM vs ours: {same}")
            figures["megatron"] = {"wall_s": wall, "ours_wall_s": ours, "speedup": wall / ours, "outputs": same}
        else:
            print("\nMegatron-LM comparison skipped: give --megatron-lm DIR (a Megatron-LM checkout)")
        if args.scale:
            steady_state(args, figures, files_jsonl, repos_jsonl, tmp, giga)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
