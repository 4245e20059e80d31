"""The rendered batch script's control flow on the real local Slurm, with a step counter as the program.

The counter (counter_job.py) follows the trainer's contract, so these tests run in seconds and pin down
the script alone: USR1 to the batch shell or to the tasks leads to a save, a requeue and a resume; a
crash is requeued within its budget (cluster.max_crash_requeues) and fails the job, cancelling its
dependants, past it; a finished stage does not run again.
"""

import re
import sys
from pathlib import Path

import pytest

from megatron_qwen.config import ClusterConfig
from megatron_qwen.launch.sbatch import JobSpec
from megatron_qwen.launch.submit import submit, write_script

from .local_slurm import poll

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one cluster, one test worker

COUNTER = Path(__file__).with_name("counter_job.py")
REPO = Path(__file__).resolve().parents[3]


def _submit_counter(cluster, tmp_path, monkeypatch, steps, *extra, stage="counter", after=None, crash_requeues=0):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    slurm = ClusterConfig(kind="slurm", partition=cluster.partition, tasks_per_node=2, time_limit="10",
                          signal_lead_seconds=60, python=sys.executable, max_crash_requeues=crash_requeues)
    stage_dir = tmp_path / stage
    job = JobSpec(name=stage, stage=stage, stage_dir=stage_dir, log_dir=tmp_path / "logs",
                  workdir=REPO, argv=[str(COUNTER), str(stage_dir), str(steps), *extra])
    job_id = submit(write_script(slurm, job), after=after)
    return job, job_id


def _steps(job, rank):
    lines = (job.stage_dir / f"steps.{rank}").read_text().split("\n")
    return [tuple(int(x) for x in line.split()) for line in lines if line.strip()]


def _log(job, job_id):
    return "".join((job.log_dir / f"{job.stage}-{job_id}.{ext}").read_text() for ext in ("out", "err"))


def _trainer_status(log, then=""):
    """The exit status the script read from srun. Both counter ranks fail with the same code, but srun may
    terminate the slower one first (143 = SIGTERM) and reports the highest of the tasks' codes."""
    match = re.search(r"trainer failed with exit status (\d+) " + re.escape(then), log)
    assert match, log
    return int(match.group(1))


def _wait_for_step(job, step, timeout=60):
    def reached():
        path = job.stage_dir / "steps.1"
        return path.exists() and any(s >= step for _, s in _steps(job, 1))

    poll(reached, timeout, f"rank 1 to reach step {step}")


@pytest.mark.parametrize("to_batch_shell", [True, False], ids=["signal-batch-shell", "signal-tasks"])
def test_usr1_saves_requeues_and_resumes(slurm_cluster, tmp_path, monkeypatch, to_batch_shell):
    job, job_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 16)
    _wait_for_step(job, 2)
    slurm_cluster.run("scancel", "--signal=USR1", *(["--batch"] if to_batch_shell else []), job_id)
    slurm_cluster.release_requeued(job_id)
    fields = slurm_cluster.wait_job(job_id)
    log = _log(job, job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    assert "requeueing to resume" in log and "stage finished" in log
    assert (job.stage_dir / "FINISHED").exists()
    for rank in (0, 1):
        steps = _steps(job, rank)
        assert [s for _, s in steps] == list(range(16)), steps  # every step once, in order
        assert {r for r, _ in steps} == {0, 1}  # some before the requeue, the rest after


def test_crash_fails_without_requeue_when_the_budget_is_zero(slurm_cluster, tmp_path, monkeypatch):
    job, job_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 4, "--fail-with", "3")
    fields = slurm_cluster.wait_job(job_id)
    log = _log(job, job_id)
    status = _trainer_status(log)
    assert status in (3, 143), log
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0" and fields["ExitCode"] == f"{status}:0", log
    assert "not requeueing" in log and (job.stage_dir / "crashes").read_text().strip() == "1"


def test_crash_is_requeued_and_resumes(slurm_cluster, tmp_path, monkeypatch):
    """A crash at step 3 of the first run (no signal): requeued once, resumes after its last step, finishes."""
    job, job_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 8, "--fail-with", "7", "--fail-at", "3",
                                  "--fail-times", "1", crash_requeues=2)
    slurm_cluster.release_requeued(job_id)
    fields = slurm_cluster.wait_job(job_id)
    log = _log(job, job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    assert _trainer_status(log, "(crash 1 of at most 2); requeueing") in (7, 143), log
    assert "stage finished" in log
    for rank in (0, 1):
        assert [s for _, s in _steps(job, rank)] == list(range(8))  # every step once, in order


def test_finished_stage_does_not_run_again(slurm_cluster, tmp_path, monkeypatch):
    (tmp_path / "counter").mkdir()
    (tmp_path / "counter" / "FINISHED").write_text("finished\n")
    job, job_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 4)
    fields = slurm_cluster.wait_job(job_id)
    assert fields["JobState"] == "COMPLETED" and "already finished" in _log(job, job_id)
    assert not (job.stage_dir / "steps.0").exists()


def test_requeued_stage_holds_its_dependant(slurm_cluster, tmp_path, monkeypatch):
    first, first_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 12, stage="first")
    second, second_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 2, stage="second", after=first_id)
    _wait_for_step(first, 2)
    slurm_cluster.run("scancel", "--signal=USR1", first_id)
    slurm_cluster.release_requeued(first_id)
    assert slurm_cluster.job(second_id)["JobState"] == "PENDING"  # the requeue did not release it
    done_first, done_second = slurm_cluster.wait_job(first_id), slurm_cluster.wait_job(second_id)
    assert done_first["JobState"] == "COMPLETED" and done_first["Restarts"] == "1", _log(first, first_id)
    assert done_second["JobState"] == "COMPLETED", _log(second, second_id)
    assert done_second["StartTime"] >= done_first["EndTime"]


def test_crashes_past_the_budget_fail_the_stage_and_cancel_its_dependant(slurm_cluster, tmp_path, monkeypatch):
    first, first_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 2, "--fail-with", "1", stage="first",
                                      crash_requeues=1)
    second, second_id = _submit_counter(slurm_cluster, tmp_path, monkeypatch, 2, stage="second", after=first_id)
    slurm_cluster.release_requeued(first_id)  # the one crash the budget allows
    done = slurm_cluster.wait_job(first_id)
    log = _log(first, first_id)
    assert done["JobState"] == "FAILED" and done["Restarts"] == "1", log
    assert "(crash 1 of at most 1); requeueing" in log and "(crash 2, cluster.max_crash_requeues=1); not requeueing" in log
    fields = slurm_cluster.wait_job(second_id)
    assert fields["JobState"] == "CANCELLED" and "Dependency" in fields["Reason"], fields
    assert not (second.stage_dir / "steps.0").exists()
