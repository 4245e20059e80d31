"""Each training-config rule fails with a message that names the key."""

from __future__ import annotations

import pytest

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.training.validate import validate_config


def cfg_with(**sections) -> Config:
    cfg = Config()
    cfg.data.seq_length = 32
    for path, value in sections.items():
        section, key = path.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def test_default_config_is_valid():
    validate_config(cfg_with(), world_size=1)


@pytest.mark.parametrize("overrides,world,message", [
    ({"train__train_iters": 0}, None, "train.train_iters (0) must be >= 1"),
    ({"train__micro_batch_size": 0}, None, "train.micro_batch_size"),
    ({"train__global_batch_size": 7}, None, "train.global_batch_size (7) must be divisible by train.micro_batch_size"),
    ({"train__global_batch_size": 6}, 4, "x data-parallel size (4)"),
    ({"train__eval_iters": -1}, None, "train.eval_iters"),
    ({"train__dtype": "fp16"}, None, "train.dtype"),
    ({"train__watchdog_seconds": -1.0}, None, "train.watchdog_seconds (-1.0) must be >= 0"),
    ({"train__max_consecutive_skips": -1}, None, "train.max_consecutive_skips (-1) must be >= 0"),
    ({"data__seq_length": 65536}, None, "data.seq_length (65536) exceeds model.max_position_embeddings"),
    ({"optim__schedule": "step"}, None, "optim.schedule ('step')"),
    ({"optim__warmup_steps": 11}, None, "optim.warmup_steps (11)"),
    ({"optim__schedule": "wsd", "optim__wsd_decay_steps": 0}, None, "optim.wsd_decay_steps (0)"),
    ({"optim__min_lr": 1.0}, None, "optim.min_lr (1.0) must be <= optim.lr"),
    ({"checkpoint__init_from": "s3"}, None, "checkpoint.init_from ('s3')"),
    ({"checkpoint__init_from": "hf"}, None, "checkpoint.init_from=hf needs checkpoint.init_path"),
    ({"checkpoint__save_interval": 5}, None, "checkpoint.save_interval (5) needs checkpoint.dir"),
    ({"checkpoint__dir": "x", "checkpoint__keep_last": -1}, None, "checkpoint.keep_last (-1)"),
    ({"logging__wandb_mode": "cloud"}, None, "logging.wandb_mode ('cloud')"),
    ({"perf__attention_backend": "sdpa"}, None, "perf.attention_backend ('sdpa')"),
    ({"perf__cuda_graph": "full_iteration"}, None, "perf.cuda_graph ('full_iteration')"),
    ({"data__num_workers": -1}, None, "data.num_workers (-1) must be >= 0"),
    ({"data__num_workers": 2, "data__prefetch_factor": 0}, None, "data.prefetch_factor (0)"),
    ({"profile__steps": [3]}, None, "profile.steps ([3]) must be [first, last]"),
    ({"profile__steps": [4, 2]}, None, "profile.steps ([4, 2])"),
    ({"profile__steps": [0, 2]}, None, "1 <= first <= last"),
    ({"profile__steps": [1, 2], "profile__ranks": []}, None, "profile.ranks"),
    ({"stage__objective": "rlhf"}, None, "stage.objective ('rlhf') is not implemented"),
    ({"parallel__tensor_model_parallel_size": 4}, None, "num_query_groups (2) must be divisible"),
    ({"parallel__tensor_model_parallel_size": 2}, 3, "world size (3) must be divisible"),
])
def test_rule(overrides, world, message):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg_with(**overrides), world_size=world)
    assert message in str(err.value)
