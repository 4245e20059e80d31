"""`megatron-qwen synth` bad input: one line naming the file (and line), exit status 2, nothing sent."""

from __future__ import annotations

from megatron_qwen.cli import main
from megatron_qwen.synth.prompts import load_templates, render


def args(tmp_path, url="http://127.0.0.1:9"):
    return ["synth", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--url", url,
            "--model", "m", "--benchmarks", "--no-progress", "--isolation", "none"]


def test_malformed_input_line(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"content": "x", "language": "python"}\n{not json\n')
    assert main(args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'in.jsonl'}:2: malformed JSON")


def test_prompt_override_with_unknown_placeholder(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("")
    (tmp_path / "p.txt").write_text("Solve {{instruction}} in {{lang}}")
    assert main([*args(tmp_path), "--prompt-answer", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "p.txt: unknown placeholder(s) ['lang'] in the answer prompt" in err[0]


def test_missing_input_file(tmp_path, capsys):
    assert main(args(tmp_path)) == 2
    assert capsys.readouterr().err.strip().startswith("error: [Errno 2] No such file or directory")


def test_override_replaces_the_packaged_prompt_and_render_is_one_pass(tmp_path):
    (tmp_path / "p.txt").write_text("Task: {{instruction}} ({{language}})")
    templates = load_templates({"answer": str(tmp_path / "p.txt")})
    assert templates["answer"] == "Task: {{instruction}} ({{language}})"
    assert templates["tests"].startswith("Write unit tests")
    assert render(templates["answer"], instruction="use {{language}}", language="Python") == \
        "Task: use {{language}} (Python)"
