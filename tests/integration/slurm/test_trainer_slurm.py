"""The real trainer under the real local Slurm, submitted through the launcher's command line.

What a user runs on a cluster, shrunk to the tiny preset on CPU: `megatron-qwen launch
experiment=tiny_cpu cluster=slurm ...` composes the stage, writes its config and batch script, and
submits it; srun starts 2 tasks that derive their ranks from Slurm's environment and train over gloo.

- a TP=2 job trains to the end, checkpoints and marks the stage finished (the uninterrupted reference);
- a two-stage PP=2 chain: the second job waits on `afterok`, starts only after the first completed, and
  initializes from the first stage's final checkpoint;
- a TP=2 job signalled with `scancel --signal=USR1` mid-run saves, requeues itself, resumes and
  finishes, its per-step losses are exactly the uninterrupted job's, and both segments log to the one
  W&B run (offline) whose id the launcher exported;
- a TP=2 job whose rank 1 crashes at step 12 (no signal) is requeued by the batch script, resumes from its
  last checkpoint and ends with the uninterrupted job's losses, in the same W&B run.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import sys
from pathlib import Path

import pytest

from megatron_qwen.launch.cli import main as launch

from .local_slurm import poll

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one cluster, one worker

REPO = Path(__file__).resolve().parents[3]
STEPS = 40


@pytest.fixture(scope="module")
def slurm_env(slurm_cluster):
    """The submitting environment, which sbatch exports to the job: the cluster, quiet single-threaded ranks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(slurm_cluster.conf))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("PYTHONWARNINGS", "ignore")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)  # the trainer must take its ranks from Slurm
        try:  # the rendezvous host is the first node of SLURM_JOB_NODELIST, i.e. this host's short name
            socket.gethostbyname(slurm_cluster.node)
        except OSError:
            mp.setenv("MASTER_ADDR", "127.0.0.1")  # a host that cannot resolve its own name
        mp.chdir(REPO)  # the job's working directory (sbatch --chdir) is the launcher's
        yield slurm_cluster


def overrides(cluster, *extra: str) -> list[str]:
    return [
        "experiment=tiny_cpu", "cluster=slurm", f"cluster.partition={cluster.partition}",
        "cluster.gpus_per_node=0", "cluster.tasks_per_node=2", "cluster.time_limit=10",
        "cluster.signal_lead_seconds=60", f"cluster.python={sys.executable}", "train.eval_interval=0", *extra,
    ]


def submit(run_dir: Path, args: list[str]) -> list[str]:
    """Run the launcher; the job ids it printed, in stage order."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = launch(["--run-dir", str(run_dir), *args])
    out = printed.getvalue()
    assert code == 0, out
    ids = re.findall(r"submitted job (\d+)", out)
    assert ids, out
    return ids


def job_log(run_dir: Path, stage: str, job_id: str) -> str:
    return "".join((run_dir / "logs" / f"{stage}-{job_id}.{ext}").read_text() for ext in ("out", "err"))


def losses(ck: Path) -> dict[int, float]:
    """Loss per step from metrics.jsonl (the last record of a step, as a resumed run appends)."""
    out = {}
    for line in (ck / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def tp2_args(cluster) -> list[str]:
    return overrides(cluster, "parallel=tp2", f"train.train_iters={STEPS}", "checkpoint.save_interval=10")


@pytest.fixture(scope="module")
def uninterrupted(slurm_env, tmp_path_factory):
    """One TP=2 job run to the end: (run dir, job id, final job fields)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    (job_id,) = submit(run_dir, tp2_args(slurm_env))
    return run_dir, job_id, slurm_env.wait_job(job_id, timeout=300)


def test_tp2_job_trains_and_checkpoints(uninterrupted):
    run_dir, job_id, fields = uninterrupted
    log = job_log(run_dir, "train", job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "0", log
    stage = run_dir / "train"
    assert (stage / "config.yaml").is_file() and (stage / "job.sbatch").is_file()
    assert (stage / "FINISHED").is_file(), log
    ck = stage / "checkpoints"
    assert (ck / "latest").read_text().strip() == f"iter_{STEPS:07d}"
    assert (ck / f"iter_{STEPS:07d}").is_dir()
    got = losses(ck)
    assert sorted(got) == list(range(1, STEPS + 1)), log
    assert got[STEPS] < got[1] - 1.0, got  # it learned the mock data
    assert "stage finished" in log and "requeue" not in log.replace("--requeue", "")


def test_two_stage_chain_starts_stage2_from_stage1_after_it_succeeded(slurm_env, tmp_path):
    run_dir = tmp_path / "chain"
    first, second = submit(run_dir, [
        "--stages", "file_pretrain,repo_pretrain",
        *overrides(slurm_env, "parallel=pp2", "train.train_iters=8", "checkpoint.save_interval=4"),
    ])
    held = slurm_env.job(second)
    assert held["JobState"] == "PENDING" and held["Reason"] == "Dependency", held
    assert held["Dependency"].startswith(f"afterok:{first}"), held
    one, two = slurm_env.wait_job(first, timeout=300), slurm_env.wait_job(second, timeout=300)
    log1, log2 = job_log(run_dir, "file_pretrain", first), job_log(run_dir, "repo_pretrain", second)
    assert one["JobState"] == "COMPLETED", log1
    assert two["JobState"] == "COMPLETED", log2
    assert two["StartTime"] >= one["EndTime"]
    stage1_final = run_dir / "file_pretrain" / "checkpoints" / "iter_0000008"
    assert f"initializing weights from {stage1_final} (fresh optimizer and schedule)" in log2
    first_losses = losses(run_dir / "file_pretrain" / "checkpoints")
    second_losses = losses(run_dir / "repo_pretrain" / "checkpoints")
    assert sorted(second_losses) == list(range(1, 9))
    # Stage 2 starts where stage 1 ended, not from a fresh initialization.
    assert second_losses[1] < first_losses[1] - 0.5, (first_losses, second_losses)
    assert (run_dir / "repo_pretrain" / "FINISHED").is_file()


def test_usr1_saves_requeues_and_matches_the_uninterrupted_losses(slurm_env, uninterrupted, tmp_path):
    run_dir = tmp_path / "preempted"
    wandb = ["logging=wandb", f"logging.wandb_dir={tmp_path / 'wb'}"]
    (job_id,) = submit(run_dir, tp2_args(slurm_env) + wandb)
    ck = run_dir / "train" / "checkpoints"

    def reached_step_3():
        if slurm_env.job(job_id)["JobState"] in ("FAILED", "CANCELLED", "COMPLETED"):
            raise AssertionError(job_log(run_dir, "train", job_id))
        return (ck / "metrics.jsonl").is_file() and max(losses(ck), default=0) >= 3

    poll(reached_step_3, 240, "the job to reach step 3", interval=0.1)
    slurm_env.run("scancel", "--signal=USR1", job_id)
    slurm_env.release_requeued(job_id)
    fields = slurm_env.wait_job(job_id, timeout=300)
    log = job_log(run_dir, "train", job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    stopped = re.search(r"stop signal received: saving at step (\d+)", log)
    assert stopped and 3 <= int(stopped.group(1)) < STEPS, log
    assert "requeueing to resume" in log and f"resuming from {ck / f'iter_{int(stopped.group(1)):07d}'}" in log
    assert (run_dir / "train" / "FINISHED").is_file()
    reference = losses(uninterrupted[0] / "train" / "checkpoints")
    resumed = losses(ck)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == reference  # bit for bit: same layout, RNG and data position restored
    # One W&B run across the requeue: two offline segments under the id the launcher exported.
    exported = re.search(r"export WANDB_RUN_ID=(\S+)", (run_dir / "train" / "job.sbatch").read_text()).group(1)
    segments = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and {s.name.split("-", 3)[3] for s in segments} == {exported}, segments


def test_crash_is_requeued_resumes_and_matches_the_uninterrupted_losses(slurm_env, uninterrupted, tmp_path,
                                                                        monkeypatch):
    """Rank 1 raises at step 12 (no signal, as an NCCL error or a node fault would end it): the batch script
    requeues the stage within cluster.max_crash_requeues, the job resumes from iter_0000010 and its losses
    are the uninterrupted job's, logged to the same W&B run."""
    run_dir = tmp_path / "crashed"
    wrapper = tmp_path / "python-with-fault"  # the job's interpreter: the trainer with a planted crash
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'integration' / 'faults.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    for key, value in {"FAULT": "crash_at_step:12", "FAULT_RANK": "1", "FAULT_ONCE": str(tmp_path / "struck")}.items():
        monkeypatch.setenv(key, value)  # sbatch exports the submitting environment to the job
    wandb = ["logging=wandb", f"logging.wandb_dir={tmp_path / 'wb'}"]
    (job_id,) = submit(run_dir, [*tp2_args(slurm_env), f"cluster.python={wrapper}", "cluster.max_crash_requeues=1",
                                 *wandb])
    slurm_env.release_requeued(job_id)
    fields = slurm_env.wait_job(job_id, timeout=300)
    log = job_log(run_dir, "train", job_id)
    ck = run_dir / "train" / "checkpoints"
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    assert "planted crash at step 12" in log and "(crash 1 of at most 1); requeueing" in log
    assert f"resuming from {ck / 'iter_0000010'}" in log
    assert losses(ck) == losses(uninterrupted[0] / "train" / "checkpoints")  # bit for bit
    exported = re.search(r"export WANDB_RUN_ID=(\S+)", (run_dir / "train" / "job.sbatch").read_text()).group(1)
    segments = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and {s.name.split("-", 3)[3] for s in segments} == {exported}, segments
