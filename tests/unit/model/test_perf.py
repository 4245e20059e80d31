"""The GPU fast path by configuration: the 7B stage-1 layout built as on a GPU node with TE (faked, no TE module
constructed) gets every fusion and overlap, and each switch is refused where it would be wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_qwen.config import ParallelConfig, PerfConfig
from megatron_qwen.model import build, perf
from megatron_qwen.model.presets import get_preset
from megatron_qwen.training.step import ddp_config, optimizer_config
from tests.unit.training.test_config_compose import EXAMPLES, compose_config

FUSIONS = ("bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "apply_rope_fusion",
           "gradient_accumulation_fusion", "cross_entropy_loss_fusion")


def example(name: str, *overrides: str):
    return compose_config(f"hydra.searchpath=[file://{EXAMPLES}]", f"experiment={name}", *overrides)


@pytest.fixture
def apex(monkeypatch):
    monkeypatch.setattr(perf, "apex_wgrad_available", lambda: True)


def built(cfg):
    switches = perf.resolve(cfg.perf, cfg.model, cfg.parallel, cfg.data.packed_sequences)
    config = build.build_transformer_config(cfg.model, cfg.parallel, torch.bfloat16, switches)
    return switches, config


def test_cpu_grants_nothing_and_builds_what_it_always_built():
    cfg = example("stage1_file_pretrain")
    switches, config = built(cfg)
    assert switches == perf.Switches(refused=switches.refused) and "*" in switches.refused
    assert not any(getattr(config, name) for name in FUSIONS)
    assert not (config.tp_comm_overlap or config.overlap_p2p_comm or config.batch_p2p_comm)
    assert config.cuda_graph_impl == "none" and config.use_cpu_initialization
    ddp = ddp_config(cfg.parallel, switches, 1)
    assert not (ddp.overlap_grad_reduce or ddp.overlap_param_gather)


def test_7b_stage1_on_a_gpu_with_te_gets_every_switch(fake_gpu, apex):
    cfg = example("stage1_file_pretrain")
    switches, config = built(cfg)
    assert set(switches.refused) == {"overlap_p2p_comm"}  # PP=1: nothing to overlap
    for name in FUSIONS:
        assert getattr(config, name), name
    assert config.cross_entropy_fusion_impl == "native"
    assert config.tp_comm_overlap and config.sequence_parallel and config.tensor_model_parallel_size == 2
    assert config.batch_p2p_comm and not config.overlap_p2p_comm  # no virtual stages: batched p2p
    assert (config.fp8, config.fp8_recipe) == ("hybrid", "tensorwise") and config.bf16
    assert config.cuda_graph_impl == "none" and not config.use_cpu_initialization
    ddp = ddp_config(cfg.parallel, switches, 1)
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather and ddp.use_distributed_optimizer
    assert ddp.grad_reduce_in_fp32 and not ddp.average_in_collective and not ddp.align_param_gather
    opt = optimizer_config(cfg.optim, cfg.parallel, config)
    assert opt.use_distributed_optimizer and opt.bf16 and opt.params_dtype == torch.bfloat16


def test_gradient_accumulation_fusion_needs_apex_even_with_te(fake_gpu):
    switches, config = built(example("stage1_file_pretrain"))
    assert not config.gradient_accumulation_fusion
    assert "fused_weight_gradient_mlp_cuda" in switches.refused["gradient_accumulation_fusion"]


def test_tp_comm_overlap_needs_sequence_parallel_and_te(fake_gpu, apex, monkeypatch):
    no_sp = example("stage1_file_pretrain", "parallel.sequence_parallel=false")
    switches, config = built(no_sp)
    assert not config.tp_comm_overlap and "sequence_parallel" in switches.refused["tp_comm_overlap"]
    local = example("stage1_file_pretrain", "model.transformer_impl=local", "model.fp8_recipe=null")
    switches, config = built(local)
    assert not config.tp_comm_overlap and "Transformer Engine" in switches.refused["tp_comm_overlap"]
    assert config.bias_activation_fusion and config.apply_rope_fusion  # TE's rope kernel serves the local spec too
    monkeypatch.setattr(perf.specs, "transformer_engine_available", lambda: False)
    switches, config = built(local)
    assert not config.apply_rope_fusion and "transformer-engine" in switches.refused["apply_rope_fusion"]


def test_rope_fusion_off_with_yarn_on_with_packing_and_cp(fake_gpu, apex):
    long = example("stage3_long_context")  # YaRN, CP=4
    switches, config = built(long)
    assert not config.apply_rope_fusion and "model.yarn.enabled" in switches.refused["apply_rope_fusion"]
    assert config.tp_comm_overlap and config.context_parallel_size == 4
    packed_cp = example("stage2_repo_pretrain", "data.packed_sequences=true", "parallel.context_parallel_size=2")
    switches, config = built(packed_cp)
    assert config.apply_rope_fusion  # megatron-core's fused thd kernel takes cp_size/cp_rank


def test_param_gather_overlap_needs_the_distributed_optimizer(fake_gpu, apex):
    cfg = example("stage1_file_pretrain", "parallel.use_distributed_optimizer=false")
    switches, _ = built(cfg)
    ddp = ddp_config(cfg.parallel, switches, 1)
    assert ddp.overlap_grad_reduce and not ddp.overlap_param_gather
    assert "use_distributed_optimizer" in switches.refused["overlap_param_gather"]
    off = example("stage1_file_pretrain", "perf.overlap_grad_reduce=false")
    switches, _ = built(off)
    assert not switches.overlap_param_gather and switches.refused["overlap_param_gather"] == "needs perf.overlap_grad_reduce"


def test_p2p_overlap_with_virtual_stages_replaces_batching(fake_gpu, apex):
    model = get_preset("qwen2.5-coder-7b")
    vpp = ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2,
                         use_distributed_optimizer=True)
    switches = perf.resolve(PerfConfig(), model, vpp)
    config = build.build_transformer_config(model, vpp, torch.bfloat16, switches)
    assert config.overlap_p2p_comm and not config.batch_p2p_comm
    ddp = ddp_config(vpp, switches, 2)
    assert ddp.align_param_gather and ddp.overlap_param_gather


def test_every_switch_can_be_turned_off(fake_gpu, apex):
    keys = [f.name for f in dataclasses.fields(PerfConfig) if f.type == "bool"]
    cfg = example("stage1_file_pretrain", *[f"perf.{k}=false" for k in keys])
    switches, config = built(cfg)
    assert set(switches.refused) == set(keys) and set(switches.refused.values()) == {"off in perf"}
    assert not any(getattr(config, name) for name in FUSIONS) and not config.tp_comm_overlap


def test_cuda_graphs_only_with_static_shapes(fake_gpu, apex):
    cfg = example("stage1_file_pretrain", "perf.cuda_graph=local")
    assert perf.resolve(cfg.perf, cfg.model, cfg.parallel).transformer_config_kwargs()["cuda_graph_impl"] == "local"
    switches = perf.resolve(cfg.perf, cfg.model, cfg.parallel, packed_sequences=True)
    assert switches.cuda_graph == "none" and "packed_sequences" in switches.refused["cuda_graph"]
