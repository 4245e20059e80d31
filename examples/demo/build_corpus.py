"""Build the demo's corpus from code already on the machine: the Python standard library.

Writes four JSONL files into OUT_DIR, small enough for a CPU demo:
- code.jsonl   one record per module file: {"text": source}                   (stage 1, file-level FIM)
- repos.jsonl  one record per stdlib package: {"name", "files": [{path, content}]} (stage 2, repo level)
- text.jsonl   docstrings of modules, classes and functions: {"text": ...}       (the text share)
- math.jsonl   generated arithmetic with worked answers: {"text": ...}          (the math share)
and chat.jsonl / prefs.jsonl: a handful of synthetic conversations and preference pairs (stage 3).
Deterministic for a given --seed; written to temporary names and renamed when complete.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import sysconfig
from pathlib import Path


def stdlib_files(max_bytes: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}:
            continue
        if path.stat().st_size <= max_bytes:
            files.append(path)
    return files


def docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) > 80:
            out.append(doc)
    return out


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"Question: What is {a} {op} {b}?\nAnswer: {a} {op} {b} = {value}. The answer is {value}."


def chats(functions: list[tuple[str, str]], rng: random.Random, n: int) -> tuple[list[dict], list[dict]]:
    """SFT conversations and DPO pairs: explain a stdlib function's docstring (chosen) vs a wrong one."""
    sft, prefs = [], []
    for name, doc in rng.sample(functions, min(n, len(functions))):
        first = doc.strip().split("\n")[0]
        question = f"What does the Python function `{name}` do?"
        sft.append({"messages": [
            {"role": "system", "content": "You are a helpful coding assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": first},
        ]})
        other = rng.choice(functions)[1].strip().split("\n")[0]
        if other != first:
            prefs.append({
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": first}],
                "rejected": [{"role": "assistant", "content": other}],
            })
    return sft, prefs


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build(out_dir: Path, max_files: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = stdlib_files(max_bytes=40_000)
    rng.shuffle(files)
    files = sorted(files[:max_files])
    root = Path(sysconfig.get_paths()["stdlib"])
    code, text, functions, packages = [], [], [], {}
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root).as_posix()
        code.append({"text": source, "path": rel})
        for doc in docstrings(source):
            text.append({"text": doc})
        try:
            tree = ast.parse(source)
            functions += [(f"{rel[:-3].replace('/', '.')}.{n.name}", ast.get_docstring(n))
                          for n in tree.body if isinstance(n, ast.FunctionDef) and ast.get_docstring(n)]
        except SyntaxError:
            pass
        package = rel.split("/")[0] if "/" in rel else "stdlib-toplevel"
        packages.setdefault(package, []).append({"path": rel, "content": source})
    repos = [{"name": f"cpython/{name}", "files": fs} for name, fs in sorted(packages.items())]
    math = [{"text": arithmetic(rng)} for _ in range(max(200, len(code)))]
    sft, prefs = chats(functions, rng, 64)
    counts = {}
    for name, records in (("code", code), ("repos", repos), ("text", text), ("math", math),
                          ("chat", sft), ("prefs", prefs)):
        write_jsonl(out_dir / f"{name}.jsonl", records)
        counts[name] = len(records)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--max-files", type=int, default=300, help="stdlib files to take (demo size)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    counts = build(args.out_dir, args.max_files, args.seed)
    print("demo corpus:", ", ".join(f"{k}={v}" for k, v in counts.items()), "->", args.out_dir)


if __name__ == "__main__":
    main()
