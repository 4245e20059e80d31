"""Command lines of the corpus pipeline.

    megatron-qwen corpus corpus.input=[dumps/] corpus.output=run1 corpus.tasks=8 corpus.workers=4 [cluster=slurm]
    megatron-qwen corpus-train-langid --roots /usr/lib/python3.12 src/ --output langid.bin
    megatron-qwen corpus-train-quality --positive good.jsonl --negative bad.jsonl --output stage1.bin

`corpus` takes Hydra overrides on the project's one config tree (`corpus.*` in megatron_qwen/config.py,
`cluster=local|slurm`); running it again resumes: tasks with a completion marker are skipped.
"""

from __future__ import annotations

import json
import sys

from megatron_qwen.config import ClusterConfig, ConfigError, CorpusConfig, from_dictconfig


def compose_corpus(overrides: list[str]) -> tuple[CorpusConfig, ClusterConfig]:
    """The composed `corpus` and `cluster` sections; a bad override is a ConfigError (one line)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from megatron_qwen.config import register_configs

    register_configs()
    try:
        with initialize_config_module("megatron_qwen.configs", version_base="1.3"):
            dcfg = compose("config", overrides=overrides)
        OmegaConf.resolve(dcfg)
        cfg = from_dictconfig(dcfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    validate_corpus(cfg.corpus)
    return cfg.corpus, cfg.cluster


def validate_corpus(c: CorpusConfig) -> None:
    from megatron_qwen.corpus.steps import MODES

    if not c.input:
        raise ConfigError("corpus.input: give the folder of JSONL records, e.g. corpus.input=[dumps/]")
    if c.mode not in MODES:
        raise ConfigError(f"corpus.mode must be one of {', '.join(MODES)}, got {c.mode!r}")
    if c.input_format not in ("files", "repos"):
        raise ConfigError(f"corpus.input_format must be 'files' or 'repos', got {c.input_format!r}")
    if (c.input_format == "repos") != (c.mode == "repo"):
        raise ConfigError("corpus.input_format=repos goes with corpus.mode=repo (and only with it)")
    if c.tasks < 1 or c.workers < 1:
        raise ConfigError(f"corpus.tasks and corpus.workers must be >= 1, got {c.tasks} and {c.workers}")
    for name in ("fim_rate", "fim_spm_rate"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise ConfigError(f"corpus.{name} must be in [0, 1], got {getattr(c, name)}")
    if not 0.0 <= c.langid.min_confidence <= 1.0:
        raise ConfigError(f"corpus.langid.min_confidence must be in [0, 1], got {c.langid.min_confidence}")
    for k, stage in enumerate(c.quality):
        if not stage.model:
            raise ConfigError(f"corpus.quality[{k}].model: give the classifier file (corpus-train-quality)")
    if c.minhash.num_buckets < 1 or c.minhash.hashes_per_bucket < 1 or c.minhash.n_grams < 1:
        raise ConfigError("corpus.minhash.num_buckets, hashes_per_bucket and n_grams must be >= 1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cfg, cluster = compose_corpus(argv)
    from megatron_qwen.corpus.pipeline import run_corpus

    try:
        report = run_corpus(cfg, cluster)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    keys = ("input_documents", "output_documents", "output_tokens", "blend", "funnel_plot", "submitted", "output")
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2), file=sys.stderr)
    return 0
