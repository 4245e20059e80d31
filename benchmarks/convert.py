"""Benchmark import-hf and export-hf on a random model with the real Qwen2.5-Coder-0.5B architecture.

    .venv/bin/python benchmarks/convert.py [--preset qwen2.5-coder-0.5b] [--workdir DIR] [--repeat 1]

A random bf16 checkpoint of the preset (24 layers, tied, vocab 151,936 for 0.5B) is written in HF
format, then three jobs run, each in a fresh process: the plain baseline (safetensors `load_file` of
every file, `save_file` to a new directory, fsync), import-hf (TP=1) and export-hf. For each: wall time
of the process, the time of the work itself (after the process has imported its libraries), and peak RSS
(VmHWM, which includes the ~0.5-0.75 GB torch/megatron-core occupy before any tensor exists).
Targets: peak RSS < 1.5 x the model's size on disk; work time within 2 x the plain read+write.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_random_checkpoint(preset: str, out: Path) -> int:
    """Random bf16 HF checkpoint of `preset` (streamed tensor by tensor); returns bytes on disk."""
    import torch

    from megatron_qwen.convert import mapping
    from megatron_qwen.convert.exporter import hf_plan, units
    from megatron_qwen.convert.hf_config import hf_config_from_model
    from megatron_qwen.convert.hf_files import ShardedSafetensorsWriter
    from megatron_qwen.model.presets import get_preset

    model = get_preset(preset)
    out.mkdir(parents=True)
    plan = hf_plan(model, model.vocab_size, torch.bfloat16)
    writer = ShardedSafetensorsWriter(out, plan)
    gen = torch.Generator().manual_seed(0)
    for layer, rules in units(model):
        for rule in rules:
            for name, shape in zip(rule.hf, mapping.hf_shapes(rule, model)):
                t = torch.randn(shape, generator=gen).mul_(0.02).to(torch.bfloat16)
                writer.write(mapping.name_for(name, layer), t)
    writer.close()
    (out / "config.json").write_text(json.dumps(hf_config_from_model(model), indent=2))
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def peak_rss() -> int:
    """VmHWM of this process image in bytes (ru_maxrss would carry the parent's peak across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fsync_dir_files(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def job(kind: str, src: str, dst: str) -> dict:
    """Runs in a fresh process: import the libraries, then time the work. Prints a JSON line."""
    import torch  # noqa: F401 - part of the start-up, not of the work

    if kind in ("plain", "make"):
        from safetensors.torch import load_file, save_file
    else:
        import megatron.core.dist_checkpointing  # noqa: F401
        import megatron.core.models.gpt  # noqa: F401

        from megatron_qwen.convert import exporter, importer
    if kind == "make":
        return {"bytes": make_random_checkpoint(src, Path(dst))}
    rss_before = peak_rss()
    t0 = time.perf_counter()
    if kind == "plain":
        Path(dst).mkdir()
        for f in sorted(Path(src).glob("*.safetensors")):
            tensors = load_file(f)
            save_file(tensors, Path(dst) / f.name, metadata={"format": "pt"})
            del tensors
        _fsync_dir_files(Path(dst))
    elif kind == "import":
        importer.import_hf(src, dst, tp=1, pp=1, show_progress=False)
    else:
        exporter.export_hf(src, dst, show_progress=False)
    work = time.perf_counter() - t0
    return {"work_s": work, "peak_rss": peak_rss(), "rss_after_imports": rss_before}


def measure(kind: str, src: Path, dst: Path) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--job", kind, str(src), str(dst)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="qwen2.5-coder-0.5b")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--repeat", type=int, default=1, help="runs per job; the fastest is reported")
    p.add_argument("--job", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        print(json.dumps(job(*args.job)))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="convert-bench-"))
    try:
        t = time.perf_counter()
        size = measure("make", args.preset, root / "hf")["bytes"]
        print(f"random {args.preset} checkpoint: {size / 1e9:.3f} GB on disk ({time.perf_counter() - t:.1f} s to make)")
        jobs = [("plain read+write", "plain", root / "hf", root / "plain"),
                ("import-hf (TP=1)", "import", root / "hf", root / "ckpt"),
                ("export-hf", "export", root / "ckpt", root / "export")]
        results = {}
        for _ in range(args.repeat):
            for label, kind, src, dst in jobs:
                r = measure(kind, src, dst)
                if label not in results or r["work_s"] < results[label]["work_s"]:
                    results[label] = r
        base = results["plain read+write"]["work_s"]
        print(f"\n{'job':<18} {'work s':>8} {'x plain':>8} {'wall s':>8} {'peak RSS GB':>12} {'x disk':>7} {'RSS after imports':>18}")
        for label, r in results.items():
            print(f"{label:<18} {r['work_s']:8.2f} {r['work_s'] / base:8.2f} {r['wall_s']:8.2f} "
                  f"{r['peak_rss'] / 1e9:12.3f} {r['peak_rss'] / size:7.2f} {r['rss_after_imports'] / 1e9:17.3f}G")
        exported = sum(p.stat().st_size for p in (root / "export").glob("*.safetensors"))
        print(f"\nexport wrote {exported / 1e9:.3f} GB; targets: peak RSS < 1.5 x disk, work time < 2 x plain")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
