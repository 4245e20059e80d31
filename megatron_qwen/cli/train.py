"""`megatron-qwen train experiment=NAME key=value ...` — the one entry point of every stage.

Hydra composes the package's `configs/` (plus `--config-dir DIR`, searched first) onto the typed tree (megatron_qwen/config.py); the result is turned into the
dataclasses, validated (before any process group exists: errors name the key and exit with status 2),
and handed to the training loop. Ranks come from torchrun's or Slurm's environment (platform.env).
`--cfg job` prints the resolved config without running.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from megatron_qwen.config import Config, ConfigError, from_dictconfig, register_configs

register_configs()


def to_config(dcfg: DictConfig) -> Config:
    """The composed DictConfig as our dataclasses. Merging onto the schema also types a saved, resolved
    config.yaml started with --config-path/--config-name (the Slurm launcher's way), which has no defaults."""
    return from_dictconfig(dcfg)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def _hydra_main(dcfg: DictConfig) -> None:
    from megatron_qwen.platform.env import read_dist_env
    from megatron_qwen.training.validate import validate_config

    cfg = to_config(dcfg)
    try:
        validate_config(cfg, read_dist_env().world_size)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    from megatron_qwen.cli.bench import make_benchmarks
    from megatron_qwen.convert.importer import import_in_group
    from megatron_qwen.platform import destroy_distributed
    from megatron_qwen.training.trainer import run

    resolved = OmegaConf.to_container(dcfg, resolve=True)
    run(cfg, resolved, OmegaConf.to_yaml(resolved), import_hf=import_in_group, benchmarks=make_benchmarks(cfg))
    destroy_distributed()


def check_overrides(overrides: list[str]) -> str | None:
    """The gist of Hydra's complaint about these overrides (unknown experiment, key, type), or None."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("megatron_qwen.configs", version_base="1.3"):
            compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        gist = str(err).strip().splitlines()[0]
        cause = str(err.__cause__ or "").strip().splitlines()
        return f"{gist} ({cause[0]})" if cause else gist
    return None


def main(argv: list[str] | None = None) -> int:
    """Hydra reads sys.argv: the dispatcher sets it to ["megatron-qwen train", *argv]. Plain overrides are
    composed once first, so a mistyped experiment or key is one line and exit status 2, like config rules."""
    if argv is not None:
        sys.argv = ["megatron-qwen train", *argv]
    overrides = sys.argv[1:]
    if not any(a.startswith("-") for a in overrides):
        problem = check_overrides(overrides)
        if problem:
            print(f"config error: {problem}", file=sys.stderr)
            return 2
    _hydra_main()
    return 0
