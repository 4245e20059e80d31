"""Needle in the Code: prompt construction and scoring exactly, and the tool end to end on a tiny
trained checkpoint (the harness, not the accuracy: a 5-step byte-level model cannot recall anything)."""

import json
import re

import pytest

from megatron_qwen.eval import needle as nd
from megatron_qwen.platform.spawn import run_workers
from tests.unit.model import _workers as w

HAYSTACK = ['import os\n\n\ndef walk(root):\n    for d, _, files in os.walk(root):\n        yield d, files\n',
            "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"]


def encode(text):
    return list(text.encode())


def decode(ids):
    return bytes(ids).decode()


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_prompt_places_needle_at_depth_on_a_line_boundary(depth):
    needle = nd.make_needle(3)
    lines = [encode(x) for x in nd.haystack_lines(HAYSTACK)]
    prompt, at = nd.build_prompt(encode, lines, needle, 400, depth)
    text = decode(prompt)
    assert len(prompt) <= 400 and len(prompt) > 400 - max(len(x) for x in lines)
    assert decode(prompt[at:]).startswith(needle.code)
    assert at == 0 or text[at - 1] == "\n"
    context = len(prompt) - len(encode(needle.code)) - len(encode(nd.QUESTION.format(name=needle.name)))
    assert abs(at - depth * context) <= max(len(x) for x in lines)
    assert text.endswith(nd.QUESTION.format(name=needle.name))
    assert text.count(needle.name) == 2  # defined once, asked for once


def test_grid_scores_an_oracle_and_a_guesser(tmp_path):
    def oracle(prompt, n):  # finds the needle in the prompt and repeats it
        text = decode(prompt)
        return encode(re.search(r"def needle_\w+\(x\):\n    return .*\n", text).group(0) + "\n\n")[:n]

    lengths, depths = [200, 300], [0.0, 0.5, 1.0]
    good = nd.run_grid(encode, decode, oracle, HAYSTACK, lengths, depths, progress=False)
    bad = nd.run_grid(encode, decode, lambda p, n: encode("def f(x):\n    return x\n"), HAYSTACK, lengths, depths,
                      progress=False)
    assert [r.correct for r in good] == [True] * 6 and [r.correct for r in bad] == [False] * 6
    assert len({r.needle for r in good}) == 6  # every cell has its own needle
    j, png = nd.write_outputs(good, lengths, depths, tmp_path)
    data = json.loads(j.read_text())
    assert data["accuracy"] == [[1.0, 1.0]] * 3 and data["mean_accuracy"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_needle_tool_end_to_end_on_tiny_checkpoint(tmp_path):
    haystack = tmp_path / "repo"
    haystack.mkdir()
    for i, text in enumerate(HAYSTACK):
        (haystack / f"m{i}.py").write_text(text)
    ckpt = tmp_path / "ckpt"
    (losses,) = run_workers(1, w.train_tiny_checkpoint, "".join(HAYSTACK) * 20, str(ckpt))
    assert losses[-1] < losses[0]
    out = tmp_path / "needle"
    (code,) = run_workers(1, w.needle_tool, [
        "--checkpoint", str(ckpt), "--byte-tokenizer", "--haystack", str(haystack),
        "--lengths", "256,384", "--depths", "0,0.5,1", "--output", str(out)])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["cells"]) == 6 and len(data["accuracy"]) == 3 and len(data["accuracy"][0]) == 2
    assert all(c["length"] <= L for c, L in zip(data["cells"], [256] * 3 + [384] * 3))
    assert all(isinstance(c["generated"], str) and c["generated"] for c in data["cells"])
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
