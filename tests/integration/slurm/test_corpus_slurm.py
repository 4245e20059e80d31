"""The corpus pipeline on the real local Slurm (datatrove's Slurm executor): the chained array jobs run, and
the shards hold the same tokens as the Local run with the same input, record by record."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_qwen.config import ClusterConfig
from megatron_qwen.corpus.pipeline import run_corpus
from tests.unit.corpus.helpers import write_input
from tests.unit.corpus.test_pipeline import corpus_config, shard_tokens

from .local_slurm import poll

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[3]


def test_corpus_on_slurm_matches_local(slurm_cluster, small_tokenizer_dir, tmp_path, monkeypatch):
    inp, _ = write_input(tmp_path / "in")
    local_cfg = corpus_config(inp, tmp_path / "local", small_tokenizer_dir, 2)
    cfg = corpus_config(inp, tmp_path / "slurm", small_tokenizer_dir, 2)
    for c in (local_cfg, cfg):
        c.minhash.num_buckets, c.minhash.hashes_per_bucket = 4, 4  # fewer bucket tasks: a quicker chain
    cfg.workers = 4  # array tasks at once on Slurm
    run_corpus(local_cfg, ClusterConfig())

    for key, value in slurm_cluster.env.items():  # sbatch/scontrol reach this cluster from this process
        monkeypatch.setenv(key, value)
    cluster = ClusterConfig(kind="slurm", partition=slurm_cluster.partition, mem="1M", cpus_per_task=1,
                            setup=[f"export PATH={Path(sys.executable).parent}:$PATH", f"export PYTHONPATH={REPO}"])
    first = run_corpus(cfg, cluster)
    assert first["submitted"][-1] == "write"
    done = tmp_path / "slurm" / "logs" / "write" / "completions"
    logs = tmp_path / "slurm" / "logs"

    def finished():
        return done.is_dir() and len(list(done.iterdir())) == 2

    try:
        poll(finished, 240, "the corpus jobs to complete")
    except Exception:
        outs = "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("slurm/*/*.out")))
        raise AssertionError(f"corpus jobs did not finish; job logs:\n{outs}") from None
    report = run_corpus(cfg, cluster)  # nothing left to submit: blend and report
    assert "submitted" not in report
    on_slurm, local = shard_tokens(tmp_path / "slurm", 2), shard_tokens(tmp_path / "local", 2)
    assert sorted(on_slurm) == sorted(local) and len(local) > 30
    for n, tokens in local.items():
        np.testing.assert_array_equal(on_slurm[n], tokens)
    assert report["output_tokens"] == sum(t.size for t in local.values())
