"""`megatron-qwen make-ast-fim`: the share knob is exact, SFT records pass through unchanged, skips are counted."""

import json
from pathlib import Path

import pytest

from megatron_qwen.data.formats.chat import normalize_messages


@pytest.fixture(scope="module")
def tool():
    from megatron_qwen.data.preprocess import ast_fim_mix

    return ast_fim_mix


def make_tree(root: Path) -> Path:
    for k in range(6):
        (root / f"pkg/m{k}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"pkg/m{k}.py").write_text(
            f"def f{k}(xs):\n    total = 0\n    for x in xs:\n        total += x * {k}\n    return total\n")
    (root / "src/Main.java").parent.mkdir(parents=True, exist_ok=True)
    (root / "src/Main.java").write_text("class Main {\n  static int twice(int x) {\n    return x * 2;\n  }\n}\n")
    (root / "web/app.js").parent.mkdir(parents=True, exist_ok=True)
    (root / "web/app.js").write_text("function add(a, b) {\n  const s = a + b;\n  return s;\n}\n")
    (root / "bad.py").write_text("def broken(:\n    pass\n")
    (root / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    (root / "notes.txt").write_text("not code")
    return root


def test_share_is_exact_and_sft_records_are_kept_in_order(tool, tmp_path):
    tree = make_tree(tmp_path / "code")
    sft = tmp_path / "sft.jsonl"
    sft_records = [{"messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}]}
                   for k in range(32)]
    sft.write_text("".join(json.dumps(r) + "\n" for r in sft_records))
    out = tmp_path / "mix.jsonl"
    report = tool.run(["--input-dir", str(tree), "--output", str(out), "--sft-input", str(sft), "--share", "0.2",
                        "--no-progress"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert report["target"] == 8 and report["samples"] == 8 and len(lines) == 40   # 8 / 40 = 0.2
    assert [r for r in lines if r.get("source") != "ast-fim"] == sft_records
    fim = [r for r in lines if r.get("source") == "ast-fim"]
    assert len(fim) == 8
    for r in fim:
        assert [m["role"] for m in normalize_messages(r["messages"])] == ["user", "assistant"]
        assert r["language"] in ("python", "java", "javascript")
    assert report["counters"]["skipped:unparseable python file"] == 1
    assert report["counters"]["skipped:non-UTF-8 file"] == 1
    assert json.loads(Path(f"{out}.report.json").read_text())["samples"] == 8
    again = tmp_path / "again.jsonl"
    tool.run(["--input-dir", str(tree), "--output", str(again), "--sft-input", str(sft), "--share", "0.2",
               "--no-progress"])
    assert again.read_text() == out.read_text()                                     # seeded: reproducible


def test_fim_only_output_from_jsonl_code_records(tool, tmp_path):
    code = tmp_path / "code.jsonl"
    code.write_text("\n".join([
        json.dumps({"text": "int twice(int x) {\n  int y = x * 2;\n  return y;\n}\n", "lang": "cpp"}),
        json.dumps({"text": "fn main() {}", "path": "main.rs"}), "[1, 2]", "{not json"]) + "\n")
    out = tmp_path / "fim.jsonl"
    report = tool.run(["--input", str(code), "--output", str(out), "--per-file", "2", "--no-progress"])
    assert report["samples"] == 2 and len(out.read_text().splitlines()) == 2
    assert report["counters"]["skipped:unknown language"] == 1
    assert report["counters"]["skipped:malformed JSON"] == 1
    assert report["counters"]["skipped:expected a JSON object"] == 1


def test_share_needs_sft_input(tool, tmp_path):
    with pytest.raises(SystemExit, match="go together"):
        tool.run(["--input-dir", str(tmp_path), "--output", str(tmp_path / "x"), "--share", "0.1"])
