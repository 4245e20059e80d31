"""Turn a Hydra experiment into one resolved job per stage, each starting from the previous one's result.

Composition happens here, on the login node: what a job runs is fixed when it is submitted, not when it
leaves the queue (configs in the checkout may change in between). Each stage gets a directory in the run
directory holding its resolved config.yaml, its job script, its checkpoints and its FINISHED marker; the
trainer is started on that saved config and nothing else.

The few trainer settings the launcher fills in are named once, in `TrainerKeys`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from megatron_qwen.config import ClusterConfig, Config, ConfigError, from_dictconfig, register_configs

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
DEFAULT_CONFIG_NAME = "config"


@dataclass(frozen=True)
class TrainerKeys:
    """Config keys of the trainer (training/) that the launcher sets, and the group that selects a stage."""

    stage_group: str = "stage"
    checkpoint_dir: str = "checkpoint.dir"  # where the stage saves, and resumes from after a requeue
    init_from: str = "checkpoint.init_from"  # "checkpoint": a fresh stage starts from init_path's weights
    init_path: str = "checkpoint.init_path"  # the previous stage's checkpoint directory


KEYS = TrainerKeys()


@dataclass
class Stage:
    """One job: its name, directory, resolved config and the overrides that produced it."""

    name: str
    stage_dir: Path
    config: DictConfig
    overrides: list[str]
    wandb_run_id: str

    @property
    def config_path(self) -> Path:
        return self.stage_dir / "config.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    @property
    def finished_file(self) -> Path:
        return self.stage_dir / "FINISHED"

    def cluster(self) -> ClusterConfig:
        return typed(self.config).cluster

    def trainer_argv(self) -> list[str]:
        """The trainer started on the saved config; Hydra writes its own files into the stage directory."""
        return [
            "-m", "megatron_qwen", "train",
            f"--config-path={self.stage_dir}", "--config-name=config",
            f"hydra.run.dir={self.stage_dir}", "hydra.output_subdir=null",
        ]


def compose(overrides: Sequence[str], config_dir: Path = DEFAULT_CONFIG_DIR,
            config_name: str = DEFAULT_CONFIG_NAME) -> DictConfig:
    """Compose and resolve the config as the trainer would see it (without the `hydra` node).

    Like Hydra's own `--config-dir`: a directory holding `<config_name>.yaml` is the primary config tree;
    any other directory (e.g. examples/qwen25_coder_7b with its `experiment/` files) is searched on top of
    the project's hydra/ tree.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    config_dir = config_dir.resolve()
    if not config_dir.is_dir():
        raise ConfigError(f"--config-dir {config_dir} is not a directory")
    primary, overrides = config_dir, list(overrides)
    if not (config_dir / f"{config_name}.yaml").is_file():
        primary = DEFAULT_CONFIG_DIR
        overrides.insert(0, f"hydra.searchpath=[file://{config_dir}]")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(primary), version_base="1.3", job_name="launch"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # lets ${hydra:...} interpolations resolve
        with open_dict(cfg):
            del cfg["hydra"]
        container = OmegaConf.to_container(cfg, resolve=True)
    GlobalHydra.instance().clear()
    return OmegaConf.create(container)


def typed(cfg: DictConfig) -> Config:
    """The typed tree: unknown keys or wrong types fail here, on the login node, with the key's name."""
    return from_dictconfig(cfg)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def plan_stages(
    overrides: Sequence[str],
    stages: Sequence[str] | None,
    run_dir: Path,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    config_name: str = DEFAULT_CONFIG_NAME,
) -> list[Stage]:
    """Compose every stage: stage i>0 initializes from stage i-1's checkpoint directory."""
    run_dir = run_dir.resolve()
    if any(ch.isspace() for ch in str(run_dir)):
        raise ConfigError(f"run directory {run_dir} contains whitespace, which #SBATCH lines cannot carry")
    names = list(stages) if stages else [None]
    planned: list[Stage] = []
    for name in names:
        stage_name, stage_overrides = "train", list(overrides)
        if name is not None:  # a stage config name, or an override such as experiment=stage2_repo_pretrain
            override = name if "=" in name else f"{KEYS.stage_group}={name}"
            stage_name = _slug(override.split("=", 1)[1])
            stage_overrides.append(override)
        if any(s.name == stage_name for s in planned):
            raise ConfigError(f"--stages names {stage_name!r} twice; each stage needs its own directory")
        stage_dir = run_dir / stage_name
        stage_overrides.append(f"{KEYS.checkpoint_dir}={stage_dir / 'checkpoints'}")
        if planned:
            stage_overrides += [f"{KEYS.init_from}=checkpoint", f"{KEYS.init_path}={planned[-1].checkpoint_dir}"]
        cfg = compose(stage_overrides, config_dir, config_name)
        typed(cfg)  # fail early on a key the tree does not know
        # Fixed by the stage's directory: a requeue, or launching the same run directory again, continues
        # the same W&B run, as it continues the same checkpoints.
        digest = hashlib.sha1(str(stage_dir).encode()).hexdigest()[:8]
        run_id = f"{_slug(run_dir.name)}-{_slug(stage_name)}-{digest}"
        planned.append(Stage(stage_name, stage_dir, cfg, stage_overrides, run_id))
    return planned


def save_config(stage: Stage) -> Path:
    """Write the resolved config beside the job (atomically)."""
    stage.stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage.config_path.with_name("config.yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(stage.config))
    tmp.replace(stage.config_path)
    return stage.config_path
