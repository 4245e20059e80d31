"""The contained adapter that lets megatron-core run on a CPU with the gloo backend.

megatron-core assumes CUDA in a few hundred places. Rather than forking it, we install, once per
process and only when CUDA is absent, a small set of stand-ins (docs/platform.md):

1. `_CudaToCpu`, a `TorchFunctionMode` that rewrites CUDA devices (`"cuda"`, `"cuda:0"`, `0`,
   `torch.device("cuda")`) to the CPU in every torch call made outside autograd's backward (where
   modes are not active; `torch.cuda.current_device()` returning the CPU device covers that), drops `pin_memory=True` (it needs a
   CUDA driver), turns `Tensor.cuda()` into a no-op, and answers
   `Tensor.type()` with the CUDA type name for CPU tensors (the optimizer and gradient clipping compare
   `param.type()` with `'torch.cuda.FloatTensor'`).
2. CPU stand-ins for the CUDA functions megatron calls directly: `current_device`, streams and events,
   `synchronize`, memory statistics, and the RNG state functions its RNG tracker uses. The "CUDA" RNG
   state is the CPU generator's state, so the tracker's forks change what CPU dropout/init draws, exactly
   as on GPU they change what CUDA kernels draw.
3. Gloo lacks `reduce_scatter_tensor` (and, in some builds, `all_gather_into_tensor`); megatron binds
   them at import time into module globals, so we rebind those globals to gloo-friendly versions built
   from `all_reduce`/`all_gather`, with `async_op=True` returning a handle whose `wait()` works.

Nothing here runs when CUDA is available: `install()` refuses to, so GPU runs use megatron untouched.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_installed = False
_lock = threading.Lock()
_CPU = torch.device("cpu")
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer is a CUDA ordinal (torch.cuda.current_device() returns 0).
    return isinstance(device, int) and not isinstance(device, bool)


def _map_device(device):
    return _CPU if _is_cuda_device(device) else device


class _CudaToCpu(TorchFunctionMode):
    """Redirects CUDA placements to the CPU (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            # Pinned memory needs a CUDA driver; megatron pins small index tensors it then moves with
            # `.cuda(non_blocking=True)` (e.g. the context-parallel RoPE slice), a no-op here.
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream / current_stream(): every operation is already ordered on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return _NullEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NullEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class _DoneWork:
    """A completed async collective (what `async_op=True` returns)."""

    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return True


def _cpu_rng_get(device="cuda", *args, **kwargs):
    return torch.get_rng_state()


def _cpu_rng_set(new_state, device=-1, graph_safe=False, *args, **kwargs):
    torch.set_rng_state(new_state)


@contextlib.contextmanager
def _outside_coalescing(group):
    """Run a collective now, even inside megatron's `_coalescing_manager` block.

    Inside that block torch records an `all_reduce` and runs it only when the block exits, so a shim
    that reads the result right away would read unreduced data.
    """
    from torch.distributed import distributed_c10d as c10d

    key = group if group is not None else c10d._get_default_group()
    pending = c10d._world.pg_coalesce_state.pop(key, None)
    try:
        yield
    finally:
        if pending is not None:
            c10d._world.pg_coalesce_state[key] = pending


def _reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
    """reduce_scatter_tensor for gloo: all-reduce a copy, keep this rank's slice of dim 0."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    reduced = input.detach().clone().contiguous()
    with _outside_coalescing(group):
        dist.all_reduce(reduced, op=op, group=group)
    chunk = reduced.shape[0] // world
    output.copy_(reduced[rank * chunk : (rank + 1) * chunk].view_as(output))
    return _DoneWork() if async_op else None


def _all_gather_into_tensor(output, input, group=None, async_op=False):
    """all_gather_into_tensor for gloo: gather into a list, then concatenate along dim 0."""
    world = dist.get_world_size(group)
    parts = [torch.empty_like(input) for _ in range(world)]
    with _outside_coalescing(group):
        dist.all_gather(parts, input.contiguous(), group=group)
    output.copy_(torch.cat(parts, dim=0).view_as(output))
    return _DoneWork() if async_op else None


def _rebind_collectives() -> None:
    """Point the module globals megatron bound at import time at the gloo-friendly versions."""
    import importlib

    modules = [
        "megatron.core.tensor_parallel.mappings",
        "megatron.core.tensor_parallel.layers",
        "megatron.core.tensor_parallel.utils",
        "megatron.core.distributed.param_and_grad_buffer",
    ]
    for name in modules:
        module = importlib.import_module(name)
        if hasattr(module, "dist_reduce_scatter_func"):
            module.dist_reduce_scatter_func = _reduce_scatter_tensor
        if hasattr(module, "dist_all_gather_func"):
            module.dist_all_gather_func = _all_gather_into_tensor
    dist.reduce_scatter_tensor = _reduce_scatter_tensor
    dist.all_gather_into_tensor = _all_gather_into_tensor
    dist._reduce_scatter_base = _reduce_scatter_tensor
    dist._all_gather_base = _all_gather_into_tensor


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    # The CPU device itself, not the ordinal 0: `device=torch.cuda.current_device()` is megatron's
    # usual idiom, and inside autograd's backward our TorchFunctionMode is not on the stack to map it.
    cuda.current_device = lambda: _CPU
    cuda.device_count = lambda: 1
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda device=None: None
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.get_rng_state = _cpu_rng_get
    cuda.random.get_rng_state = _cpu_rng_get
    cuda.set_rng_state = _cpu_rng_set
    cuda.random.set_rng_state = _cpu_rng_set
    # Seeding "CUDA" seeds the CPU generator, so megatron's tracker and initialization are reproducible.
    # (torch.manual_seed itself calls cuda.manual_seed_all, so that one stays a no-op.)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.memory_reserved = lambda device=None: 0
    cuda.max_memory_reserved = lambda device=None: 0
    cuda.reset_peak_memory_stats = lambda device=None: None
    cuda.empty_cache = lambda: None


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_rng_get
    mrandom._set_cuda_rng_state = _cpu_rng_set
    # The tracker warns whenever the CPU state moves inside a fork; on CPU that is the point of a fork.
    logging.getLogger(mrandom.__name__).setLevel(logging.ERROR)


def install() -> None:
    """Install the CPU adapter in this process (idempotent). Refuses when CUDA is available."""
    global _installed
    with _lock:
        if _installed:
            return
        if torch.cuda.is_available():
            raise RuntimeError("the CPU adapter must not be installed when CUDA is available")
        # On CPU the absence of TE/apex is expected; megatron warns about it at every import.
        for text in ("Transformer Engine and Apex are not installed", "Apex is not installed",
                     "absl.logging is not installed"):
            warnings.filterwarnings("ignore", message=text)
        _patch_torch_cuda()
        _patch_megatron_rng()
        _rebind_collectives()
        _CudaToCpu().__enter__()  # stays on this thread's mode stack for the life of the process
        _installed = True


def installed() -> bool:
    return _installed


@contextlib.contextmanager
def suspended():
    """Run a block without the device-mapping `TorchFunctionMode` (the other stand-ins stay).

    For hot loops that create no tensor on a "cuda" device: every torch call inside a Python function mode
    pays a Python round trip, which in token-by-token generation is a large share of the time. Only this
    thread's mode stack changes; outside a CPU process (or before `install()`) this does nothing.
    """
    from torch.overrides import _get_current_function_mode_stack, _pop_mode_temporarily

    if not _installed or not any(isinstance(m, _CudaToCpu) for m in _get_current_function_mode_stack()):
        yield
        return
    with _pop_mode_temporarily():
        yield
