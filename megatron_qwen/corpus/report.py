"""The report of a corpus run: the funnel (documents and characters in and out of every step, tokens at the
end), removal counts by reason, a few removed examples per step and reason, and a funnel plot.

Why it exists: a filter that silently removes half the data is the usual data bug. Everything here is read
back from what the run left on disk (datatrove's per-task stats under `logs/<stage>/stats/`, the removed
documents under `work/removed/<step>/`, the shard summaries), so a resumed run reports all its tasks.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from megatron_qwen.config import CorpusConfig

_DEDUP_REASON = {"exact_dedup": "exact_duplicate", "minhash": "near_duplicate"}  # removed/<step> folders
_STEP_REASON = {"exact-deduplication": "exact_duplicate", "MinHash": "near_duplicate"}  # datatrove step names


def _plain(name: str) -> str:
    """A step's name without datatrove's emoji (the plot's font has none)."""
    return "".join(c for c in name.split(": ", 1)[-1] if c.isascii()).strip()


def _stage_steps(logs: Path) -> list[dict]:
    """Per step of a stage: stats summed over its tasks (datatrove writes one stats file per task)."""
    merged: list[dict] = []
    for stats_file in sorted((logs / "stats").glob("*.json")):
        steps = json.loads(stats_file.read_text())
        for k, step in enumerate(steps):
            if k == len(merged):
                merged.append({"name": step["name"], "stats": defaultdict(float)})
            for key, value in step.get("stats", {}).items():
                merged[k]["stats"][key] += value["total"] if isinstance(value, dict) else value
    return merged


def funnel(cfg: CorpusConfig) -> list[dict]:
    """Rows (stage, step, docs_in, docs_out, chars_out, removed by reason) in pipeline order."""
    from megatron_qwen.corpus.steps import STAGES

    out = Path(cfg.output).resolve()
    rows = []
    for stage in STAGES:
        logs = out / "logs" / stage
        if not logs.is_dir():
            continue
        for step in _stage_steps(logs):
            s = step["stats"]
            name = _plain(step["name"])
            if "forwarded" in s or "dropped" in s:  # a filter: documents in, forwarded out, dropped by reason
                reasons = {k.removeprefix("dropped_"): int(v) for k, v in s.items() if k.startswith("dropped_")}
                if s.get("dropped") and not reasons:
                    reason = next((r for key, r in _STEP_REASON.items() if key in name), "removed")
                    reasons = {reason: int(s["dropped"])}
                rows.append({"stage": stage, "step": name, "docs_in": int(s["total"]),
                             "docs_out": int(s.get("forwarded", 0)),
                             "chars_out": int(s.get("doc_len", 0)), "removed": reasons})
            elif "documents" in s and "tokens" in s:  # the shard writer
                rows.append({"stage": stage, "step": name, "docs_out": int(s["documents"]),
                             "tokens_out": int(s["tokens"])})
            elif stage == "filter" and "documents" in s:  # the reader
                rows.append({"stage": stage, "step": name, "docs_out": int(s["documents"]),
                             "chars_out": int(s.get("doc_len", 0))})
    return rows


def removed_examples(cfg: CorpusConfig, per_reason: int) -> dict[str, dict[str, list[dict]]]:
    """{step: {reason: [a few removed documents (id, path, first characters)]}}."""
    root = Path(cfg.output).resolve() / "work" / "removed"
    examples: dict[str, dict[str, list[dict]]] = {}
    for step_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        by_reason: dict[str, list[dict]] = defaultdict(list)
        for f in sorted(step_dir.glob("*.jsonl.gz")):
            with gzip.open(f, "rt", encoding="utf-8") as lines:
                for line in lines:
                    rec = json.loads(line)
                    meta = rec.get("metadata", {})
                    reason = meta.get("filter_reason", _DEDUP_REASON.get(step_dir.name, "removed"))
                    if len(by_reason[reason]) < per_reason:
                        by_reason[reason].append({"id": rec.get("id"), "path": meta.get("path"),
                                                  "text": rec.get("text", "")[:300]})
        examples[step_dir.name] = dict(by_reason)
    return examples


def plot_funnel(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["step"] for r in rows]
    docs = [r["docs_out"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), docs, color="tab:blue")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    for k, n in enumerate(docs):
        ax.text(n, k, f" {n}", va="center")
    ax.set_xlabel("documents after the step")
    ax.set_title("corpus funnel")
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_report(cfg: CorpusConfig) -> dict:
    """`report.json` and `funnel.png` in the run folder; returns the report."""
    from megatron_qwen.data.indexed import write_atomic_text

    out = Path(cfg.output).resolve()
    rows = funnel(cfg)
    shards = []
    for summary in sorted((out / "shards").glob("*.json")):
        info = json.loads(summary.read_text())
        shards.append({"shard": summary.stem, "documents": info["documents"], "tokens": info["tokens"],
                       "skipped": info.get("skipped", {})})
    report = {
        "output": str(out),
        "mode": cfg.mode,
        "tasks": cfg.tasks,
        "input_documents": rows[0]["docs_out"] if rows else 0,
        "output_documents": sum(s["documents"] for s in shards),
        "output_tokens": sum(s["tokens"] for s in shards),
        "funnel": rows,
        "shards": shards,
        "removed_examples": removed_examples(cfg, cfg.report_examples),
    }
    if rows:
        plot_funnel(rows, out / "funnel.png")
        report["funnel_plot"] = str(out / "funnel.png")
    write_atomic_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
