"""Device and process-group bring-up: CUDA + NCCL untouched, or CPU + gloo with the adapter.

The lowest layer above the config: ranks from the environment (env.py), process groups (distributed.py),
the CPU adapter (cpu_adapter.py, docs/platform.md), the shared collectives (collectives.py), local
multi-process jobs (spawn.py), atomic files (files.py) and the one filter for known third-party log noise
(logs.py). The names below load `distributed.py` (and torch) only when first used, so torch-free users of
this package (preprocessing, the launcher) stay torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

_EXPORTS = ("compute_dtype", "destroy_distributed", "device", "init_distributed", "on_gpu")

if TYPE_CHECKING:
    from megatron_qwen.platform.distributed import (
        compute_dtype,
        destroy_distributed,
        device,
        init_distributed,
        on_gpu,
    )


def __getattr__(name: str):
    if name in _EXPORTS:
        from megatron_qwen.platform import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module 'megatron_qwen.platform' has no attribute {name!r}")


__all__ = ["compute_dtype", "destroy_distributed", "device", "init_distributed", "on_gpu"]
