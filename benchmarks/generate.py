"""Generation speed: our KV-cached generator vs transformers' `generate`, same weights, same prompts.

    .venv/bin/python benchmarks/generate.py [--layers 4] [--hidden 256] [--vocab 8192] [--batch 8]
                                            [--prompt 48] [--new 64] [--repeat 5] [--threads 2]

A random Qwen2 model (float32, GQA 2, tied) is written in HF format and imported to a Megatron
checkpoint; both sides load their copy in this process (TP = PP = 1). Prompts: `batch` random id
sequences of lengths spread over [prompt/2, prompt] (or all `prompt` long with --equal-lengths). transformers runs `generate` on the batch
left-padded with an attention mask (its usual batched path, KV cache on); ours runs the batch
right-padded (model/generation.py). Both decode greedily exactly `new` tokens per prompt (no stop).
Each side is warmed up once, then the two are timed alternately `repeat` times (a busy machine slows both
alike); the best time of each is reported as generated tokens per second. Target: ours / transformers >= 1.0. Also printed: whether the greedy ids agree per prompt.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=48)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--equal-lengths", action="store_true", help="every prompt `prompt` tokens long")
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from megatron_qwen.convert.importer import import_hf
    from megatron_qwen.eval.generate import Generator, ensure_distributed, load_model
    from megatron_qwen.model.generation import SamplingParams

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                          num_hidden_layers=a.layers, num_attention_heads=a.hidden // 32, num_key_value_heads=2,
                          tie_word_embeddings=True, max_position_embeddings=4096, initializer_range=0.1)
        Qwen2ForCausalLM(cfg).save_pretrained(str(work / "hf"))
        import_hf(work / "hf", work / "ckpt", show_progress=False)

        g = torch.Generator().manual_seed(1)
        low = a.prompt if a.equal_lengths else a.prompt // 2
        lengths = torch.linspace(low, a.prompt, a.batch).round().int().tolist()
        prompts = [torch.randint(3, a.vocab, (n,), generator=g).tolist() for n in lengths]
        tokens = a.batch * a.new

        hf = AutoModelForCausalLM.from_pretrained(str(work / "hf"), dtype=torch.float32).eval()
        width = max(lengths)
        ids = torch.zeros(a.batch, width, dtype=torch.long)
        mask = torch.zeros(a.batch, width, dtype=torch.long)
        for i, pr in enumerate(prompts):
            ids[i, width - len(pr):] = torch.tensor(pr)
            mask[i, width - len(pr):] = 1

        def run_hf():
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new, min_new_tokens=a.new,
                                  do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
            return [row[width:].tolist() for row in out]

        ensure_distributed()
        loaded = load_model(checkpoint=work / "ckpt")
        ours = Generator(loaded.chunks, vocab_size=loaded.vocab_size, batch_size=a.batch)
        params = SamplingParams(max_tokens=a.new)

        def run_ours():
            return [r.tokens for r in ours.generate(prompts, params)]

        out_hf, out_ours = run_hf(), run_ours()  # warm-up (and the ids compared below)
        times: dict[str, list[float]] = {"transformers": [], "megatron_qwen": []}
        for _ in range(a.repeat):  # interleaved, so a busy machine slows both sides alike
            times["transformers"].append(_timed(run_hf))
            times["megatron_qwen"].append(_timed(run_ours))
        t_hf, t_ours = min(times["transformers"]), min(times["megatron_qwen"])
        same = sum(x == y for x, y in zip(out_hf, out_ours))
        print(f"model: {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, float32, {a.threads} threads; "
              f"batch {a.batch} prompts of {min(lengths)}-{max(lengths)} tokens, {a.new} new tokens each")
        print(f"transformers generate : {t_hf:7.3f} s  {tokens / t_hf:9.1f} tokens/s")
        print(f"megatron_qwen         : {t_ours:7.3f} s  {tokens / t_ours:9.1f} tokens/s")
        print(f"ratio ours/transformers (tokens/s): {t_hf / t_ours:.2f}  (target >= 1.0)")
        print(f"greedy ids identical for {same}/{a.batch} prompts")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
