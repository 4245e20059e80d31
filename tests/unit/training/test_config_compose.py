"""Every experiment composes onto the typed tree and validates; presets in YAML equal presets in code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import megatron_qwen.cli.train  # noqa: F401 - registers base_config
from megatron_qwen.config import Config
from megatron_qwen.model.presets import PRESETS
from megatron_qwen.training.validate import validate_config

REPO = Path(__file__).resolve().parents[3]
HYDRA = REPO / "megatron_qwen" / "configs"
EXAMPLES = REPO / "examples" / "qwen25_coder_7b"
EXPERIMENTS = sorted(p.stem for p in (HYDRA / "experiment").glob("*.yaml"))
EXAMPLE_EXPERIMENTS = sorted(p.stem for p in (EXAMPLES / "experiment").glob("*.yaml"))


def compose_config(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(HYDRA), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def test_there_are_experiments():
    assert "tiny_cpu" in EXPERIMENTS and "tiny_cpu_stage2" in EXPERIMENTS
    assert len(EXAMPLE_EXPERIMENTS) == 6, EXAMPLE_EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name):
    cfg = compose_config(f"experiment={name}")
    assert isinstance(cfg, Config) and isinstance(cfg.model.yarn.factor, float)
    # Experiments meant for the launcher leave the keys it fills in (launch.stages.TrainerKeys) unset.
    cfg.checkpoint.dir = cfg.checkpoint.dir or "/tmp/launcher-fills-this"
    if cfg.checkpoint.init_from == "checkpoint":
        cfg.checkpoint.init_path = cfg.checkpoint.init_path or "/tmp/previous-stage"
    world = max(cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
                * cfg.parallel.context_parallel_size, 1)
    validate_config(cfg, world_size=world)


@pytest.mark.parametrize("name", EXAMPLE_EXPERIMENTS)
def test_7b_example_composes_and_validates_at_its_world_size(name):
    cfg = compose_config(f"hydra.searchpath=[file://{EXAMPLES}]", f"experiment={name}")
    assert cfg.model.name == "qwen2.5-coder-7b"
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    validate_config(cfg, world_size=world)


def test_7b_stages_chain_8k_32k_128k_then_sft_and_dpo():
    sp = f"hydra.searchpath=[file://{EXAMPLES}]"
    s1, s2, s3, s4, s5, s6 = (compose_config(sp, f"experiment={n}") for n in EXAMPLE_EXPERIMENTS)
    assert [s.data.seq_length for s in (s1, s2, s3)] == [8192, 32768, 131072]
    assert s2.model.rope_theta == 1e6 and s3.model.yarn.enabled and s3.parallel.context_parallel_size > 1
    # Post-training: coarse SFT, fine SFT (lower LR), DPO, each from the previous stage; YaRN stays on.
    assert [s.stage.objective for s in (s4, s5, s6)] == ["sft", "sft", "dpo"]
    assert s4.optim.lr > s5.optim.lr > s6.optim.lr and all(s.model.yarn.enabled for s in (s4, s5, s6))
    assert s4.post.sft.fim_share > 0 and s4.data.packed_sequences
    chain = (s1, s2, s3, s4, s5, s6)
    assert all(b.checkpoint.init_path == a.checkpoint.dir for a, b in zip(chain, chain[1:]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_yaml_equals_preset(name):
    cfg = compose_config(f"model={name}")
    assert dataclasses.asdict(cfg.model) == dataclasses.asdict(PRESETS[name])


@pytest.mark.parametrize("group,choice", [("parallel", "pp2_vpp2"), ("optim", "wsd"), ("stage", "long_context"),
                                          ("logging", "wandb"), ("data", "code_blend")])
def test_group_choices_compose(group, choice):
    compose_config(f"{group}={choice}")


def test_unknown_key_is_a_composition_error_naming_it():
    with pytest.raises(Exception, match="no_such_key"):
        compose_config("train.no_such_key=1")


def test_wrong_type_is_a_composition_error_naming_it():
    with pytest.raises(Exception, match="train_iters"):
        compose_config("train.train_iters=many")


def test_cfg_job_prints_the_resolved_config():
    out = subprocess.run([sys.executable, "-m", "megatron_qwen", "train", "experiment=tiny_cpu", "--cfg", "job"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "global_batch_size: 8" in out.stdout and "name: file_pretrain" in out.stdout


def test_validation_error_exits_2_before_any_process_group():
    out = subprocess.run([sys.executable, "-m", "megatron_qwen", "train", "experiment=tiny_cpu",
                          "train.global_batch_size=7"], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "train.global_batch_size (7)" in out.stderr


def test_a_saved_resolved_config_types_without_defaults():
    """The Slurm launcher starts the trainer on a saved, resolved config.yaml (no defaults list)."""
    from megatron_qwen.cli.train import to_config

    with initialize_config_dir(config_dir=str(HYDRA), version_base="1.3"):
        composed = compose("config", overrides=["experiment=tiny_cpu"])
    saved = OmegaConf.create(OmegaConf.to_yaml(OmegaConf.to_container(composed, resolve=True)))
    cfg = to_config(saved)
    assert isinstance(cfg, Config) and cfg.train.global_batch_size == 8 and cfg.model.name == "tiny"


@pytest.mark.parametrize("stage, objective", [("sft_lora", "sft"), ("dpo_lora", "dpo")])
def test_lora_stages_compose_and_validate(stage, objective, tmp_path):
    from megatron_qwen.config import ConfigError

    cfg = compose_config(f"stage={stage}", "data.blend=[/data/x]", f"checkpoint.init_path={tmp_path}")
    assert cfg.stage.objective == objective and cfg.lora.enabled and cfg.lora.rank == 16
    assert cfg.lora.target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    validate_config(cfg, world_size=1)
    cfg.checkpoint.init_from = "none"
    with pytest.raises(ConfigError, match="checkpoint.init_from"):
        validate_config(cfg, world_size=1)
