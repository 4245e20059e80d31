"""Start torch.distributed and megatron-core's model-parallel groups from one ParallelConfig.

The layout is validated before any process group exists. On a machine with CUDA the backend is NCCL
and megatron-core runs untouched; without CUDA the CPU adapter is installed first and the backend is gloo.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_qwen.config import (
    ModelConfig,
    ParallelConfig,
    derive_data_parallel_size,
    validate_model_parallel,
)
from megatron_qwen.platform import cpu_adapter
from megatron_qwen.platform.env import DistEnv, read_dist_env
from megatron_qwen.platform.logs import CPU_SUMMARY


def on_gpu() -> bool:
    """The one place that asks whether this process computes on a CUDA device."""
    return torch.cuda.is_available()


def compute_dtype(dtype: str) -> torch.dtype:
    """Parameter dtype for `train.dtype`: "bf16", "fp32", or "auto" (bf16 on GPU, float32 on CPU)."""
    if dtype == "bf16" or (dtype == "auto" and on_gpu()):
        return torch.bfloat16
    return torch.float32


def device() -> torch.device:
    """The device this process computes on."""
    if on_gpu():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(
    parallel: ParallelConfig,
    model: ModelConfig | None = None,
    seq_length: int | None = None,
    seed: int = 1234,
    env: DistEnv | None = None,
    timeout_minutes: int = 30,
    te_rng_tracker: bool = False,
) -> int:
    """Validate the layout, start the process group and megatron's parallel state; returns dp size.

    `te_rng_tracker`: Transformer Engine's RNG tracker (CUDA graphs need it)."""
    from megatron.core import parallel_state, tensor_parallel

    env = env or read_dist_env()
    dp = derive_data_parallel_size(parallel, env.world_size)
    if model is not None:
        validate_model_parallel(model, parallel, seq_length or 0)

    if on_gpu():
        if parallel.tensor_model_parallel_size * parallel.context_parallel_size > 1:
            # One hardware queue, so TP/CP communication kernels are scheduled before the GEMMs they overlap
            # (read when the CUDA context is created, i.e. before set_device); a value set by the user wins.
            os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    else:
        cpu_adapter.install()
        backend = "gloo"
        if env.rank == 0:
            logging.getLogger(__name__).info(CPU_SUMMARY)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed, te_rng_tracker=te_rng_tracker)
    return dp


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
