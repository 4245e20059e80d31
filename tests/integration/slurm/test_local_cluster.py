"""The local Slurm fixture itself: a batch job with a two-task step runs and completes."""

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one cluster, one test worker


def test_sbatch_wrap_runs_two_tasks(slurm_cluster, tmp_path):
    out = tmp_path / "wrap-%j.out"
    job_id = slurm_cluster.submit_wrap(
        'srun bash -c "echo task=\\$SLURM_PROCID ntasks=\\$SLURM_NTASKS nodes=\\$SLURM_JOB_NODELIST"',
        "--ntasks=2", f"--output={out}",
    )
    fields = slurm_cluster.wait_job(job_id, timeout=60)
    log = (tmp_path / f"wrap-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log
    lines = sorted(line for line in log.splitlines() if line.startswith("task="))
    assert lines == [
        f"task={i} ntasks=2 nodes={slurm_cluster.node}" for i in range(2)
    ], log
