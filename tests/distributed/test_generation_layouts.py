"""KV-cached generation at TP=1, TP=2, PP=2 and PP=2 x VPP=2 gives transformers' greedy tokens, batched.

Batches are left-padded (one prefill, per-row RoPE positions, a padding mask); the right-padded
variant (what the Transformer Engine spec uses on GPU) is checked too at TP=1 and PP=2.
A tiny random transformers Qwen2 model (4 layers, 14 heads in 2 KV groups, untied, vocabulary 320) is
imported to a Megatron checkpoint, exported back to HF with our exporter, and transformers' `generate`
(greedy, KV cache) continues each prompt of a batch of different lengths on the exported weights, one
prompt at a time. One 2-process gloo job then loads the checkpoint at every layout (dist-checkpointing
reshards it) and generates the whole batch at once; every layout must give exactly transformers' ids.
At TP=2 the same job also samples with a seed twice (same ids both times), stops on a stop id, generates
with chunks built with sequence parallelism (switched off for the call, restored after), and serves one
request over loopback HTTP with rank 0 serving and rank 1 following; a second model with YaRN rope scaling
is checked at TP=2.
"""

from __future__ import annotations

import pytest
import torch

from megatron_qwen.platform.spawn import run_workers
from tests.unit.convert._hf_models import make_hf_model

pytestmark = pytest.mark.slow  # one 2-process job

NAME = "gqa7-untied"
YARN = "gqa2-tied-yarn"  # YaRN rope scaling (factor 4), tied embeddings, vocabulary 256
WORLD = 2
NEW = 8
LAYOUTS = {"tp1": (1, 1, None), "tp2": (2, 1, None), "pp2": (1, 2, None), "pp2-vpp2": (1, 2, 2)}
PROMPTS = [  # different lengths (a batch is right-padded; prompts start generating at their own length)
    [5, 17, 33, 2, 91, 120, 7],
    [250, 3, 9, 41],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22],
    [300, 301, 302, 303, 77],
]
YARN_PROMPTS = [[t % 256 for t in p] for p in PROMPTS]


def _set_layout(tp: int, pp: int, vpp: int | None) -> None:
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             virtual_pipeline_model_parallel_size=vpp)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


class IdsText:
    """A stand-in tokenizer whose text is the ids themselves, so the server's text answers show ids."""

    eod = None

    def decode(self, ids):
        return " ".join(map(str, ids))


def _serve_one_request(gen) -> dict | None:
    """Rank 0 serves /v1/completions over loopback HTTP and asks for one greedy completion; rank 1 follows."""
    import json
    import threading
    import urllib.request

    import torch.distributed as dist

    from megatron_qwen.eval.server import Service, follow, serve

    gen.tokenizer = IdsText()
    service = Service(gen, "tiny")
    if dist.get_rank() != 0:
        follow(service)
        return None
    stop, answer = threading.Event(), {}

    def client(address):
        body = json.dumps({"prompt": PROMPTS[0], "max_tokens": NEW, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://{address[0]}:{address[1]}/v1/completions", data=body)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answer.update(json.loads(r.read()))
        finally:
            stop.set()

    serve(service, "127.0.0.1", 0, ready=lambda a: threading.Thread(target=client, args=(a,)).start(), stop=stop)
    return answer


def generate_all_layouts(ckpt: str, yarn_ckpt: str) -> dict:
    """Worker (both ranks): load `ckpt` at every layout and generate the batch (and `yarn_ckpt` at TP=2)."""
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.eval.generate import Generator, load_model
    from megatron_qwen.model.generation import SamplingParams
    from megatron_qwen.platform import init_distributed

    init_distributed(ParallelConfig())
    out = {}
    for layout, (tp, pp, vpp) in LAYOUTS.items():
        _set_layout(tp, pp, vpp)
        loaded = load_model(checkpoint=ckpt)
        gen = Generator(loaded.chunks, vocab_size=loaded.vocab_size, batch_size=len(PROMPTS))
        out[layout] = [g.tokens for g in gen.generate(PROMPTS, SamplingParams(max_tokens=NEW))]
        if layout in ("tp1", "pp2"):  # the right-padded batch (what the Transformer Engine spec gets on GPU)
            gen.decoder.left_padding = False
            out[layout + "-right-padded"] = [g.tokens for g in gen.generate(PROMPTS, SamplingParams(max_tokens=NEW))]
            gen.decoder.left_padding = True
        if layout == "tp1":  # two data-parallel replicas: each generates half the prompts, all ranks get all
            shared = Generator(loaded.chunks, vocab_size=loaded.vocab_size, batch_size=2, data_parallel=True)
            out["data_parallel"] = [g.tokens for g in shared.generate(PROMPTS, SamplingParams(max_tokens=NEW))]
            sampled = SamplingParams(max_tokens=NEW, temperature=1.0, seed=3)  # one prompt twice, one per replica
            out["data_parallel_samples"] = [g.tokens for g in shared.generate([PROMPTS[0]] * 2, sampled)]
        if layout == "tp2":
            sampled = SamplingParams(max_tokens=NEW, temperature=0.8, top_p=0.9, seed=7)
            out["sampled"] = [[g.tokens for g in gen.generate(PROMPTS[:2], sampled)] for _ in range(2)]
            stop_at = out[layout][0][3]  # the 4th greedy token of prompt 0
            g = gen.generate(PROMPTS[:1], SamplingParams(max_tokens=NEW, stop_ids=frozenset({stop_at})))[0]
            out["stopped"] = (g.tokens, g.finish_reason, g.stop_id, stop_at)
            out["served"] = _serve_one_request(gen)
            # The same checkpoint in chunks built with sequence parallelism (as a trainer may hold them).
            from megatron_qwen.checkpointing.weights import load_model_checkpoint
            from megatron_qwen.model.build import build_model

            sp = build_model(loaded.model, ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True), 0)
            load_model_checkpoint(sp, ckpt)
            gen_sp = Generator(sp, vocab_size=loaded.vocab_size, batch_size=len(PROMPTS))
            out["sequence_parallel"] = [g.tokens for g in gen_sp.generate(PROMPTS, SamplingParams(max_tokens=NEW))]
            out["sequence_parallel_restored"] = all(c.config.sequence_parallel for c in sp)
            yarn = load_model(checkpoint=yarn_ckpt)  # YaRN's rotary table, re-indexed per row, at TP=2
            gen_yarn = Generator(yarn.chunks, vocab_size=yarn.vocab_size, batch_size=len(PROMPTS))
            out["yarn"] = [g.tokens for g in gen_yarn.generate(YARN_PROMPTS, SamplingParams(max_tokens=NEW))]
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from megatron_qwen.convert.exporter import export_hf
    from megatron_qwen.convert.importer import import_hf

    root = tmp_path_factory.mktemp("generation")
    refs = {}
    for name, seed, prompts in ((NAME, 3, PROMPTS), (YARN, 4, YARN_PROMPTS)):
        make_hf_model(root / "orig" / name, name, seed=seed)
        import_hf(root / "orig" / name, root / "ckpt" / name, show_progress=False)
        export_hf(root / "ckpt" / name, root / "exported" / name, show_progress=False)
        hf = AutoModelForCausalLM.from_pretrained(str(root / "exported" / name), dtype=torch.float32).eval()
        refs[name] = []
        for p in prompts:
            ids = hf.generate(torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                              use_cache=True, pad_token_id=0, eos_token_id=None)
            refs[name].append(ids[0, len(p):].tolist())
        del hf
    results = run_workers(WORLD, generate_all_layouts, str(root / "ckpt" / NAME), str(root / "ckpt" / YARN),
                          timeout=600)
    return refs[NAME], results, refs[YARN]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_greedy_tokens_equal_transformers(generated, layout):
    refs, results, _ = generated
    for rank, result in enumerate(results):
        assert result[layout] == refs, f"rank {rank}, {layout}"


@pytest.mark.parametrize("layout", ["tp1", "pp2"])
def test_right_padded_batches_give_the_same_tokens(generated, layout):
    refs, results, _ = generated
    assert all(result[layout + "-right-padded"] == refs for result in results)


def test_data_parallel_replicas_share_the_prompts(generated):
    refs, results, _ = generated
    assert all(result["data_parallel"] == refs for result in results)
    first, second = results[0]["data_parallel_samples"]
    assert first != second and results[1]["data_parallel_samples"] == [first, second]  # replicas draw differently


def test_seeded_sampling_repeats_and_differs_from_greedy(generated):
    refs, results, _ = generated
    first, second = results[0]["sampled"]
    assert first == second and results[1]["sampled"][0] == first  # same seed, same ids, on both TP ranks
    assert first != refs[:2]  # temperature 0.8 over a random model: not the greedy path
    assert all(len(t) == NEW for t in first)


def test_stop_id_ends_generation_without_the_stop_id(generated):
    refs, results, _ = generated
    tokens, reason, stop_id, stop_at = results[0]["stopped"]
    cut = refs[0].index(stop_at)
    assert tokens == refs[0][:cut] and reason == "stop" and stop_id == stop_at


def test_chunks_built_with_sequence_parallelism_generate_the_same_and_keep_it(generated):
    refs, results, _ = generated
    for result in results:
        assert result["sequence_parallel"] == refs and result["sequence_parallel_restored"]


def test_model_parallel_server_answers_over_http(generated):
    """TP=2: rank 0 serves, rank 1 follows the broadcast requests; the answer is the greedy continuation."""
    refs, results, _ = generated
    served = results[0]["served"]
    assert served["choices"][0]["text"] == " ".join(map(str, refs[0]))
    assert served["usage"]["completion_tokens"] == NEW and served["usage"]["prompt_tokens"] == len(PROMPTS[0])


def test_yarn_model_at_tp2_equals_transformers(generated):
    _, results, yarn_refs = generated
    assert all(result["yarn"] == yarn_refs for result in results)
