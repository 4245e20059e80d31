"""Device and process-group bring-up: CUDA + NCCL untouched, or CPU + gloo with the adapter (DESIGN §3)."""

from megatron_qwen.platform.distributed import (
    destroy_distributed,
    device,
    init_distributed,
    on_gpu,
)

__all__ = ["init_distributed", "destroy_distributed", "device", "on_gpu"]
