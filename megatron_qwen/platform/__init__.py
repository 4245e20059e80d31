"""Device and process-group bring-up: CUDA + NCCL untouched, or CPU + gloo with the adapter.

The lowest layer above the config: ranks from the environment (env.py), process groups (distributed.py),
the CPU adapter (cpu_adapter.py, docs/platform.md), the shared collectives (collectives.py), local
multi-process jobs (spawn.py) and the one filter for known third-party log noise (logs.py).
"""

from megatron_qwen.platform.distributed import (
    compute_dtype,
    destroy_distributed,
    device,
    init_distributed,
    on_gpu,
)

__all__ = ["compute_dtype", "init_distributed", "destroy_distributed", "device", "on_gpu"]
