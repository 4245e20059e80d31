"""Per-GPU memory of a preset at a sequence length and layout (see megatron_qwen.model.memory).

  megatron-qwen plan --preset qwen2.5-coder-7b --seq-length 32768 --tp 4 --cp 2 --dp 4 --sp --recompute selective
  megatron-qwen plan --preset qwen2.5-coder-32b --seq-length 131072 --gpus 64 --sp --recompute full   # search
  megatron-qwen plan --preset qwen2.5-coder-32b --seq-length 8192 --gpus 8 --lora-rank 16 --recompute selective

Exit status 1 when the layout does not fit (or the search finds none).
"""

import argparse

from megatron_qwen.model import memory
from megatron_qwen.model.presets import PRESETS, get_preset


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--seq-length", type=int, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--vpp", type=int, default=None)
    p.add_argument("--sp", action="store_true", help="sequence parallelism")
    p.add_argument("--no-distributed-optimizer", action="store_true")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--num-microbatches", type=int, default=8)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--spec", choices=["te", "local"], default="te")
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--overhead-gb", type=float, default=3.0, help="CUDA context, NCCL buffers, fragmentation")
    p.add_argument("--gpus", type=int, default=None, help="search every tp/pp/cp layout for this many GPUs")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="LoRA: frozen base weights (no gradients or optimizer state), adapters of this rank")
    p.add_argument("--lora-targets", default=",".join(memory.LORA_TARGETS),
                   help="comma-separated megatron module names the adapters wrap")
    return p.parse_args(argv)


def _row(lay, p) -> str:
    g = p.as_gb()
    return (f"tp{lay.tp} pp{lay.pp} cp{lay.cp} dp{lay.dp}{f' vpp{lay.vpp}' if lay.vpp else ''}  "
            f"weights {g['weights']:6.1f}  grads {g['gradients']:6.1f}  optim {g['optimizer']:6.1f}  "
            f"act {g['activations']:6.1f} (no recompute {g['activations_no_recompute']:6.1f})  "
            f"total {g['total']:6.1f} GB")


def main(argv=None) -> int:
    a = parse(argv)
    model = get_preset(a.preset)
    lay = memory.Layout(
        tp=a.tp, pp=a.pp, cp=a.cp, dp=a.dp, vpp=a.vpp, sequence_parallel=a.sp,
        distributed_optimizer=not a.no_distributed_optimizer,
        recompute=None if a.recompute == "none" else a.recompute, micro_batch_size=a.micro_batch_size,
        num_microbatches=a.num_microbatches, params_dtype=a.dtype, spec=a.spec, lora_rank=a.lora_rank,
        lora_targets=tuple(t for t in a.lora_targets.split(",") if t),
    )
    if a.gpus:
        found = memory.search(model, a.seq_length, a.gpus, lay, a.gpu_gb)
        print(f"{a.preset} at {a.seq_length} tokens on {a.gpus} GPUs of {a.gpu_gb:.0f} GB: {len(found)} layouts fit")
        for layout, p in found:
            print("  " + _row(layout, p))
        return 0 if found else 1
    p = memory.plan(model, lay, a.seq_length, a.overhead_gb)
    ok = memory.fits(p, a.gpu_gb)
    lora = f", LoRA rank {a.lora_rank}" if a.lora_rank else ""
    print(f"{a.preset} at {a.seq_length} tokens{lora} (stage {p.stage}, {p.params / 1e9:.2f} B params/GPU)")
    print(_row(lay, p) + f"  -> {'fits' if ok else 'DOES NOT FIT'} in {a.gpu_gb:.0f} GB")
    return 0 if ok else 1

