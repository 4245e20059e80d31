"""The package's layers import only downward, and no module imports itself back through others.

The order (docs/architecture.md): config < platform < model < checkpointing < {data, sandbox} <
{training, convert, synth, corpus} < {eval, launch, codebench} < cli. Modules of one layer may import each other; `training`, `convert`,
`synth` and `corpus` stand side by side (none imports another), and so do `eval` and `launch`. Function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "megatron_qwen"
LAYERS = [["config"], ["platform"], ["model"], ["checkpointing"], ["data", "sandbox"], ["training", "convert", "synth", "corpus"],
          ["eval", "launch", "codebench"], ["cli"]]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every megatron_qwen module this file imports (absolute or relative, at any depth)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("megatron_qwen")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("megatron_qwen"):  # `from pkg import sub` imports pkg.sub; `from m import x`, m
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def edges() -> dict[str, set[str]]:
    out = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in imports_of(path):
            while imported and imported not in MODULES:  # `from pkg import name` names a symbol, not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        out[name] = targets
    return out


def test_every_subpackage_has_a_layer():
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    top |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert top - set(RANK) == {"configs"} or top - set(RANK) == set(), f"no layer for {top - set(RANK)}"


def test_imports_go_only_downward():
    bad = []
    for source, targets in edges().items():
        src = layer_of(source)
        for target in targets:
            dst = layer_of(target)
            if src is None or dst is None or src == dst:
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{source} ({src}) imports {target} ({dst})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each back edge of a depth-first search, as the cycle it closes."""
    cycles, done, path = [], set(), []

    def visit(node: str) -> None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(edges())
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("bad", ["megatron_qwen.training.trainer", "megatron_qwen.cli"])
def test_the_check_catches_an_upward_import(tmp_path, bad):
    """The rule itself can fail: a platform module importing a higher layer is reported."""
    path = PACKAGE / "platform" / "_probe_upward.py"
    path.write_text(f"import {bad}\n")
    try:
        MODULES[module_name(path)] = path
        with pytest.raises(AssertionError, match="_probe_upward"):
            test_imports_go_only_downward()
    finally:
        MODULES.pop(module_name(path), None)
        path.unlink()
