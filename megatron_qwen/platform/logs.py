"""The one place that silences known third-party noise, so a user sees each fact once or not at all.

On a machine without an NVIDIA driver, megatron-core warns at import, once per module and process, that
Transformer Engine and Apex are missing (five lines per process, more under pipeline parallelism), torch
logs that it found no CUDA runtime, megatron's synchronous checkpoint save announces the deprecation
of its asynchronous one, and its FSDP module logs at INFO what it detected. None of that is actionable on CPU, where the fallbacks are the point:
`init_distributed` says it once, in one line, on rank 0. On a GPU machine the Transformer Engine / Apex
warnings are kept (there, a missing Transformer Engine is worth knowing). `install()` runs when
`megatron_qwen` is imported (it touches only `warnings` and `logging`, no heavy imports).
"""

from __future__ import annotations

import logging
import os
import re
import warnings

CPU_ONLY_WARNINGS = (  # (message prefix, category): expected without CUDA
    ("Transformer Engine and Apex are not installed", UserWarning),
    ("Apex is not installed", UserWarning),
)
ALWAYS_WARNINGS = (
    ("absl.logging is not installed", UserWarning),
    ("MimoModelConfig is experimental", UserWarning),
    ("The following imports from `dynamic_context.py`", DeprecationWarning),
    # torch.distributed.checkpoint, as megatron's dist-checkpointing drives it when loading:
    ("torch.distributed is disabled, unavailable or uninitialized", UserWarning),
    ("The argument order of load has been changed", UserWarning),
    ("Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning),
    # megatron-core 0.19's own TransformerConfig default (cuda_graph_scope "full"), not a choice of ours:
    ("full scope is deprecated", UserWarning),
)
LOG_LINES = {  # logger name -> message prefixes dropped
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    "megatron.core.dist_checkpointing.strategies.torch": ("MCore's async save is deprecated",),
    # GPTModel is the model this project builds on, deliberately (docs/architecture.md):
    "megatron.core.models.gpt.gpt_model": ("GPTModel IS DEPRECATED",),
}
CPU_SUMMARY = ("CPU platform: gloo process groups and megatron-core's torch fallbacks "
               "(Transformer Engine and Apex are GPU-only; their warnings are silenced)")


def has_nvidia_driver() -> bool:
    """A cheap test (no torch import) for a machine where CUDA may run."""
    return os.path.exists("/proc/driver/nvidia/version")


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_installed = False


def install() -> None:
    """Idempotent: add the warning filters and log filters above."""
    global _installed
    if _installed:
        return
    _installed = True
    known = ALWAYS_WARNINGS + (() if has_nvidia_driver() else CPU_ONLY_WARNINGS)
    for prefix, category in known:
        warnings.filterwarnings("ignore", message=re.escape(prefix), category=category)
    for name, prefixes in LOG_LINES.items():
        logging.getLogger(name).addFilter(_DropPrefixes(prefixes))
    logging.getLogger("megatron").setLevel(logging.WARNING)  # megatron-core's INFO chatter (FSDP detection, ...)
