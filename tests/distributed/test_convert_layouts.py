"""import-hf at TP=1, TP=2, PP=2, TP=2xPP=2 and PP=2xVPP=2, then Megatron == transformers, export == original.

Tiny random transformers Qwen2 models (untied GQA 1; tied GQA 2 in bf16; untied GQA 7; tied GQA 2 with
YaRN rope_scaling) are imported at every layout by one 4-process gloo job that re-initializes megatron's
parallel state per layout (the idle ranks are data-parallel replicas). Each layout's checkpoint is then
loaded into a float32 Megatron model at that layout and run on the same tokens as transformers
(logits and per-token loss, max abs diff <= 1e-4). Finally rank 0, as a one-process job, exports every
checkpoint back to HF, and the exported tensors must be bit-identical to the originals, same names and
shapes; three exports must also give transformers' greedy continuation of the original model. Rank 0 also
re-saves the TP=1 models with ckpt_io.save_model_checkpoint (the trainer's path) and imports one model
with its vocabulary padded; both export bit-identically too.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron_qwen.platform.spawn import run_workers
from tests.unit.convert._hf_models import MODELS, make_hf_model

pytestmark = pytest.mark.slow  # one 4-process job, ~2 minutes on 2 busy cores

LAYOUTS = {  # name: (tp, pp, vpp)
    "tp1": (1, 1, None),
    "tp2": (2, 1, None),
    "pp2": (1, 2, None),
    "tp2-pp2": (2, 2, None),
    "pp2-vpp2": (1, 2, 2),
}
WORLD = 4
SEQ = 32
TOL = 1e-4
PADDED = "gqa7-untied"  # also imported with its vocabulary (320) padded to 384 rows


def _set_layout(tp: int, pp: int, vpp: int | None):
    from megatron.core import parallel_state, tensor_parallel

    from megatron_qwen.config import ParallelConfig

    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp
    )
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    return ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                          virtual_pipeline_model_parallel_size=vpp)


def _local_names_match(ckpt: str, hf_dir: str, resave: str) -> bool:
    """At TP=1: the loaded local-spec model's state dict is exactly mapping.hf_to_megatron(spec='local').

    The loaded model is then saved again with ckpt_io.save_model_checkpoint (the trainer's path) to `resave`.
    """
    from megatron_qwen.checkpointing.weights import load_model_checkpoint, read_record, save_model_checkpoint
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.convert import mapping
    from megatron_qwen.convert.hf_files import SafetensorsReader
    from megatron_qwen.model.build import build_model

    model, _ = read_record(ckpt)
    reader = SafetensorsReader(hf_dir)
    hf = {n: reader.read(n) for n in reader.names()}
    reader.close()
    want = mapping.hf_to_megatron(hf, model, spec="local")
    chunks = build_model(model, ParallelConfig(), SEQ, params_dtype=next(iter(hf.values())).dtype)
    load_model_checkpoint(chunks, ckpt)
    got = {k: v for k, v in chunks[0].state_dict().items() if not k.endswith("_extra_state")}
    save_model_checkpoint(chunks, resave, model)
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def _load_tolerates_only_extra_state(root: str) -> dict:
    """A model with an `_extra_state` the checkpoint lacks (as TE's core attention on GPU) loads; one with a
    tensor the checkpoint lacks (untied head from a tied checkpoint) is refused, naming the tensor."""
    import dataclasses

    from megatron_qwen.checkpointing.weights import load_model_checkpoint, read_record
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model

    ckpt = os.path.join(root, "ckpt", "tp1", "gqa2-tied-yarn")
    model, _ = read_record(ckpt)
    chunks = build_model(model, ParallelConfig(), SEQ)
    local_attention = type(chunks[0].decoder.layers[0].self_attention.core_attention)

    class WithExtraState(local_attention):
        def get_extra_state(self):
            return None

        def set_extra_state(self, state):
            pass

    for layer in chunks[0].decoder.layers:
        layer.self_attention.core_attention.__class__ = WithExtraState
    assert any(k.endswith("core_attention._extra_state") for k in chunks[0].state_dict())
    load_model_checkpoint(chunks, ckpt)
    untied = build_model(dataclasses.replace(model, tie_word_embeddings=False), ParallelConfig(), SEQ)
    try:
        load_model_checkpoint(untied, ckpt)
        refused = ""
    except KeyError as e:
        refused = str(e)
    return {"extra_state_ok": True, "untied_refused": refused}


def convert_all_layouts(hf_dirs: dict[str, str], root: str, tokens: dict[str, torch.Tensor]) -> dict:
    """Worker (all ranks): import every model at every layout and run it; rank 0 then exports them all."""
    import torch.distributed as dist

    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.convert.exporter import export_in_process
    from megatron_qwen.convert.importer import import_in_group
    from megatron_qwen.convert.verify import megatron_outputs_in_group
    from megatron_qwen.platform import destroy_distributed, init_distributed
    from megatron_qwen.platform.spawn import free_port

    init_distributed(ParallelConfig())
    outputs, local_names, load_checks = {}, {}, {}
    for layout, (tp, pp, vpp) in LAYOUTS.items():
        parallel = _set_layout(tp, pp, vpp)
        for name, hf_dir in hf_dirs.items():
            ckpt = os.path.join(root, "ckpt", layout, name)
            import_in_group(hf_dir, ckpt, parallel, show_progress=False)
            result = megatron_outputs_in_group(ckpt, torch.from_numpy(tokens[name]))
            if result is not None:  # numpy: tensors cannot outlive the worker on their way back
                outputs[(layout, name)] = tuple(t.numpy() for t in result)
    rank = dist.get_rank()
    destroy_distributed()
    exported = {}
    if rank == 0:  # export is a one-process job
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_PORT=str(free_port()))
        init_distributed(ParallelConfig())
        for name, hf_dir in hf_dirs.items():
            local_names[name] = _local_names_match(os.path.join(root, "ckpt", "tp1", name), hf_dir,
                                                   os.path.join(root, "ckpt", "resaved", name))
        load_checks = _load_tolerates_only_extra_state(root)
        # Embedding padded to a multiple of 128 rows on import (320 -> 384); export must drop the padding.
        padded = os.path.join(root, "ckpt", "padded", PADDED)
        import_in_group(hf_dirs[PADDED], padded, ParallelConfig(), pad_vocab_to=128, show_progress=False)
        logits, _ = megatron_outputs_in_group(padded, torch.from_numpy(tokens[PADDED]))
        outputs[("padded", PADDED)] = (logits.numpy(), None)
        for layout in [*LAYOUTS, "resaved"]:
            for name in hf_dirs:
                out = os.path.join(root, "hf", layout, name)
                export_in_process(os.path.join(root, "ckpt", layout, name), out, max_shard_bytes=200_000,
                                  show_progress=False)
                exported[(layout, name)] = out
        out = os.path.join(root, "hf", "padded", PADDED)
        export_in_process(padded, out, max_shard_bytes=200_000, show_progress=False)
        exported[("padded", PADDED)] = out
    return {"outputs": outputs, "local_names": local_names, "exported": exported,
            "load_checks": load_checks if rank == 0 else {}}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from megatron_qwen.convert.verify import hf_outputs, token_batch

    root = tmp_path_factory.mktemp("convert")
    hf_dirs, tokens, refs = {}, {}, {}
    for i, name in enumerate(MODELS):
        hf_dirs[name] = str(root / "orig" / name)
        make_hf_model(hf_dirs[name], name, seed=i)
        tokens[name] = token_batch(MODELS[name][4], batch=2, seq=SEQ, seed=100 + i)
        refs[name] = hf_outputs(hf_dirs[name], tokens[name])
    merged: dict = {"outputs": {}, "local_names": {}, "exported": {}, "load_checks": {}}
    numpy_tokens = {k: t.numpy() for k, t in tokens.items()}
    for rank_result in run_workers(WORLD, convert_all_layouts, hf_dirs, str(root), numpy_tokens, timeout=900):
        for key in merged:
            merged[key].update(rank_result[key])
    merged.update(hf_dirs=hf_dirs, refs=refs, tokens=tokens)
    return merged


CASES = [(layout, name) for layout in LAYOUTS for name in MODELS]
EXPORT_CASES = CASES + [("resaved", name) for name in MODELS] + [("padded", PADDED)]


@pytest.mark.parametrize("layout,name", CASES)
def test_logits_match_transformers(converted, layout, name):
    from megatron_qwen.convert.verify import compare

    ref = converted["refs"][name]
    got = tuple(torch.from_numpy(a) for a in converted["outputs"][(layout, name)])
    result = compare(ref, got, hf_vocab=MODELS[name][4], tolerance=TOL)
    print(f"\n[{layout} {name}] logits max abs diff {result.logits_max_abs_diff:.2e} "
          f"(max |logits| {result.logits_max_abs:.2f}), loss max abs diff {result.loss_max_abs_diff:.2e}")
    assert result.ok, result.report()


def test_padded_vocabulary_logits_match_on_the_hf_vocabulary(converted):
    """Megatron's 64 padding rows produce extra logits (zeros); the 320 real ones equal transformers'."""
    logits = torch.from_numpy(converted["outputs"][("padded", PADDED)][0])
    ref_logits = converted["refs"][PADDED][0]
    assert logits.shape[-1] == 384 and not logits[..., 320:].any()
    diff = float((logits[..., :320] - ref_logits).abs().max())
    print(f"\n[padded {PADDED}] logits max abs diff {diff:.2e} over the HF vocabulary")
    assert diff <= TOL


def test_load_tolerates_missing_extra_state_but_not_missing_tensors(converted):
    checks = converted["load_checks"]
    assert checks["extra_state_ok"]
    assert "output_layer.weight" in checks["untied_refused"], checks["untied_refused"]


@pytest.mark.parametrize("name", list(MODELS))
def test_local_spec_state_dict_is_the_mapping(converted, name):
    assert converted["local_names"][name], "loaded TP=1 state dict != mapping.hf_to_megatron(spec='local')"


@pytest.mark.parametrize("layout,name", EXPORT_CASES)
def test_export_is_bit_identical(converted, layout, name):
    from safetensors import safe_open

    orig_dir, out_dir = converted["hf_dirs"][name], converted["exported"][(layout, name)]
    with safe_open(os.path.join(orig_dir, "model.safetensors"), "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    index = json.load(open(os.path.join(out_dir, "model.safetensors.index.json")))
    exported = {}
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(out_dir, file), "pt") as f:
            exported.update({k: f.get_tensor(k) for k in f.keys()})
    assert len(set(index["weight_map"].values())) > 1, "the tiny shard size should give several files"
    assert exported.keys() == original.keys()
    for k, t in original.items():
        assert exported[k].dtype == t.dtype and exported[k].shape == t.shape, k
        assert torch.equal(exported[k].view(torch.uint8), t.view(torch.uint8)), f"{k} differs"


@pytest.mark.parametrize("layout,name", [("tp2-pp2", "gqa2-tied-bf16"), ("pp2-vpp2", "gqa7-untied"),
                                         ("tp2", "gqa2-tied-yarn")])
def test_export_generates_like_the_original(converted, layout, name):
    from transformers import AutoConfig, AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(converted["hf_dirs"][name])
    exported = AutoModelForCausalLM.from_pretrained(converted["exported"][(layout, name)])
    rope_keys = ("rope_type", "rope_theta", "factor", "original_max_position_embeddings")
    got_rope = AutoConfig.from_pretrained(converted["exported"][(layout, name)]).rope_parameters
    assert {k: got_rope.get(k) for k in rope_keys} == {k: original.config.rope_parameters.get(k) for k in rope_keys}
    prompt = converted["tokens"][name][:, :8]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        a, b = original.generate(prompt, **kwargs), exported.generate(prompt, **kwargs)
    print(f"\n[{layout} {name}] greedy continuation {b[0, 8:].tolist()}")
    assert torch.equal(a, b)
