""""Needle in the Code": can the model find a small function anywhere in a long repository context?

For each (context length, depth) cell of a grid, a unique small function (the needle) is inserted at
that fraction of a repository context (whole source lines, so code stays code), followed by a request
to reproduce it; the model's greedy continuation scores 1 when it reproduces the function exactly
(leading whitespace ignored, everything after the function ignored). Results are written as JSON and
as a heatmap PNG (depth × length, accuracy), each written to a temporary name and renamed.

The grid is model-agnostic: it takes `encode(text) -> ids`, `decode(ids) -> text` and
`generate(prompt_ids, max_new_tokens) -> ids`; `megatron_qwen.eval.generate` supplies the last for a
megatron-core GPTModel and `megatron-qwen needle` wires a checkpoint and a tokenizer to it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_qwen.platform.files import atomic_path

QUESTION = "\n# Reproduce the function `{name}` defined earlier in this repository, exactly.\n"


@dataclass
class Needle:
    name: str
    code: str


@dataclass
class CellResult:
    length: int  # prompt tokens (context + needle + question)
    depth: float  # where the needle starts, as a fraction of the context
    needle: str
    inserted_at: int  # token offset of the needle in the prompt
    generated: str
    correct: bool


def make_needle(seed: int) -> Needle:
    """A small, unique, deterministic function the context cannot otherwise contain."""
    rng = random.Random(seed)
    name = f"needle_{rng.getrandbits(32):08x}"
    a, b = rng.randint(2, 97), rng.randint(1, 997)
    return Needle(name, f"def {name}(x):\n    return x * {a} + {b}\n")


def haystack_lines(texts: Sequence[str]) -> list[str]:
    """Source files as lines (newline kept), each file preceded by a path-like header line."""
    lines = []
    for i, text in enumerate(texts):
        lines.append(f"# file {i}\n")
        lines += [line if line.endswith("\n") else line + "\n" for line in text.splitlines()]
    if not lines:
        raise ValueError("the haystack is empty: give at least one non-empty source file")
    return lines


def build_prompt(encode: Callable[[str], list[int]], lines: Sequence[list[int]], needle: Needle, length: int,
                 depth: float) -> tuple[list[int], int]:
    """(prompt ids of exactly `length` tokens or fewer, the needle's token offset).

    `lines` are the haystack's lines already encoded; they are repeated as needed. The needle goes at
    the line boundary nearest to `depth` of the context budget.
    """
    needle_ids = encode(needle.code)
    question_ids = encode(QUESTION.format(name=needle.name))
    budget = length - len(needle_ids) - len(question_ids)
    if budget <= 0:
        raise ValueError(f"length {length} leaves no room for context (needle + question take "
                         f"{len(needle_ids) + len(question_ids)} tokens)")
    context, bounds, i = [], [0], 0
    while True:
        line = lines[i % len(lines)]
        if len(context) + len(line) > budget:
            break
        context += line
        bounds.append(len(context))
        i += 1
        if i > 10 * budget:  # only empty lines
            break
    target = depth * len(context)
    cut = min(bounds, key=lambda b: abs(b - target))
    return context[:cut] + needle_ids + context[cut:] + question_ids, cut


def score(generated: str, needle: Needle) -> bool:
    """Exact reproduction: the continuation starts (after whitespace) with the needle's code."""
    return generated.lstrip().startswith(needle.code.rstrip())


def run_grid(encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str],
             generate: Callable[[list[int], int], list[int]], haystack: Sequence[str],
             lengths: Sequence[int], depths: Sequence[float], seed: int = 0, progress: bool = True) -> list[CellResult]:
    """Every (length, depth) cell, each with its own needle."""
    from tqdm import tqdm

    lines = [encode(line) for line in haystack_lines(haystack)]
    cells = [(length, depth) for length in lengths for depth in depths]
    results = []
    for k, (length, depth) in enumerate(tqdm(cells, desc="needle", unit="cell", disable=not progress)):
        needle = make_needle(seed * 100_003 + k)
        prompt, offset = build_prompt(encode, lines, needle, length, depth)
        new = generate(prompt, len(encode(needle.code)) + 4)
        text = decode(new)
        results.append(CellResult(len(prompt), depth, needle.code, offset, text, score(text, needle)))
    return results


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_outputs(results: list[CellResult], lengths: Sequence[int], depths: Sequence[float], out_dir: str | Path,
                  meta: dict | None = None) -> tuple[Path, Path]:
    """results.json (every cell plus the accuracy matrix) and heatmap.png; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = [[0.0 for _ in lengths] for _ in depths]
    for k, r in enumerate(results):
        grid[k % len(depths)][k // len(depths)] = float(r.correct)
    summary = dict(meta or {}, lengths=list(lengths), depths=list(depths), accuracy=grid,
                   mean_accuracy=sum(r.correct for r in results) / max(len(results), 1),
                   cells=[asdict(r) for r in results])
    json_path, png_path = out / "results.json", out / "heatmap.png"
    _atomic(json_path, lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))

    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title("Needle in the Code: exact match")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    _atomic(png_path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return json_path, png_path
