"""What a run reports and where it goes: model FLOPs, TFLOP/s, MFU, memory, and the metrics sink.

`MetricsSink` writes each logged step to the console, `metrics.jsonl` and W&B, on the logging rank only
(last pipeline stage, first tensor- and data-parallel rank), and plots the `eval/...` benchmark metrics
against step beside metrics.jsonl (`eval_metrics.png`); `MetricsWindow` averages an objective's metrics
over the steps since the last log line.

The FLOPs formula, written once:

Forward FLOPs per token of a Qwen2 decoder (matmuls only, 2 FLOPs per multiply-add, s = sequence length):
    per layer:  2·h·(q + 2·kv)      q/k/v projections   (q = heads·d, kv = groups·d)
              + 2·2·s·q             attention scores QKᵀ and scores·V (full s×s, no causal halving,
                                    the convention of Megatron-LM and PaLM's MFU)
              + 2·q·h               output projection
              + 2·3·h·f             SwiGLU MLP: gate, up, down
    head:       2·h·V               logits (counted for tied and untied heads alike: the matmul is done)
Training step = 3 × forward (backward = 2 × forward); activation recomputation is not counted (model
FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from megatron_qwen.config import Config, ModelConfig
from megatron_qwen.platform import on_gpu
from megatron_qwen.training.wandb_logger import build_logger

# Dense peak TFLOP/s per device (no sparsity).
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0,
    ("H100", "fp8"): 1979.0,
    ("H200", "bf16"): 989.0,  # H100's tensor cores with more, faster memory
    ("H200", "fp8"): 1979.0,
    ("A100", "bf16"): 312.0,
}


def flops_per_token(model: ModelConfig, seq_length: int) -> float:
    """Forward FLOPs for one token (see the module docstring)."""
    h, f, d, V = model.hidden_size, model.ffn_hidden_size, model.kv_channels, model.vocab_size
    q, kv = model.num_attention_heads * d, model.num_query_groups * d
    layer = 2 * h * (q + 2 * kv) + 4 * seq_length * q + 2 * q * h + 6 * h * f
    return float(model.num_layers * layer + 2 * h * V)


def train_flops(model: ModelConfig, seq_length: int, tokens: int) -> float:
    """Model FLOPs of one training step over `tokens` tokens (forward + backward)."""
    return 3.0 * flops_per_token(model, seq_length) * tokens


def device_peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """Peak of this device for `dtype` ("bf16"/"fp8"), from the table; None when unknown (e.g. CPU)."""
    if override:
        return override
    if not on_gpu():
        return None
    name = torch.cuda.get_device_name()
    for (device, kind), peak in PEAK_TFLOPS.items():
        if device in name and kind == dtype:
            return peak
    return None


def memory_gib() -> dict[str, float]:
    """Peak allocated device memory on GPU; resident set size on CPU."""
    if on_gpu():
        return {"mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"mem_gib": psutil.Process().memory_info().rss / 2**30}


def throughput(model: ModelConfig, seq_length: int, tokens: int, seconds: float, world_size: int,
               peak: float | None) -> dict[str, float | None]:
    """tokens/s (whole job), TFLOP/s per device and MFU for `tokens` tokens processed in `seconds`."""
    seconds = max(seconds, 1e-9)
    tflops = train_flops(model, seq_length, tokens) / seconds / world_size / 1e12
    return {
        "tokens_per_s": tokens / seconds,
        "tflops_per_device": tflops,
        "mfu": tflops / peak if peak else None,
    }


def is_logging_rank() -> bool:
    from megatron.core import parallel_state

    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0)


class MetricsWindow:
    """Global (sum, count) totals of each metric since the last `pop`, for means over a log interval."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def add(self, totals: dict[str, tuple[float, float]]) -> None:
        for key, (s, n) in totals.items():
            acc = self.totals.setdefault(key, [0.0, 0.0])
            acc[0] += s
            acc[1] += n

    def pop(self) -> dict[str, float]:
        means = {k: s / max(n, 1.0) for k, (s, n) in self.totals.items()}
        self.totals.clear()
        return means


class MetricsSink:
    """Console line + JSON lines file + W&B, all on the logging rank only."""

    def __init__(self, cfg: Config, config_dict: dict, run_id: str | None):
        self.active = is_logging_rank()
        root = Path(cfg.checkpoint.dir or ".")
        path = cfg.logging.metrics_file or (str(root / "metrics.jsonl") if cfg.checkpoint.dir else None)
        if self.active and path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path) if path else None
        self.file = open(path, "a") if (self.active and path) else None
        self.wandb = build_logger(cfg.logging, config_dict, str(root), run_id, self.active)

    def shared_run_id(self) -> str | None:
        """The W&B run id of the logging rank, known on every rank (collective), for checkpoints."""
        ids = [None] * dist.get_world_size()
        dist.all_gather_object(ids, self.wandb.run_id)
        return next((i for i in ids if i), None)

    def emit(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        parts = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if v is not None]
        parts += [f"{k}=n/a" for k, v in metrics.items() if v is None]
        print(f"step {step} | " + " | ".join(parts), flush=True)
        if self.file:
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
        self.wandb.log(metrics, step)

    def plot_eval(self) -> Path | None:
        """Redraw eval_metrics.png beside metrics.jsonl from every `eval/...` record in it (logging rank)."""
        if not (self.active and self.file):
            return None
        self.file.flush()
        return plot_eval_metrics(self.path, self.path.with_name("eval_metrics.png"))

    def close(self) -> None:
        if self.file:
            self.file.close()
        self.wandb.finish()


def plot_eval_metrics(metrics_file: Path, out: Path) -> Path | None:
    """One panel per `eval/<benchmark>/<metric>` key of a metrics.jsonl, the value against step (the last record
    of a step wins, as a resumed run appends); None when there is no such key. Written atomically."""
    series: dict[str, dict[int, float]] = {}
    for line in Path(metrics_file).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        for key, value in record.items():
            if key.startswith("eval/") and isinstance(value, (int, float)):
                series.setdefault(key, {})[record["step"]] = float(value)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_qwen.platform.files import atomic_path

    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.2 * len(series)), squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], sorted(series.items())):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], marker="o")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out
