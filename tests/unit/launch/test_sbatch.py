"""Rendering a stage as an sbatch script, and the cluster section's validation."""

import subprocess
from pathlib import Path

import pytest

from megatron_qwen.config import ClusterConfig, ConfigError, ParallelConfig
from megatron_qwen.launch.cluster import time_limit_seconds, validate_cluster, world_size
from megatron_qwen.launch.sbatch import FINISHED_ENV, JobSpec, render_sbatch, sbatch_submit_command


def _job(tmp_path: Path, **env) -> JobSpec:
    return JobSpec(
        name="exp-file_pretrain", stage="file_pretrain", stage_dir=tmp_path / "file_pretrain",
        log_dir=tmp_path / "logs", workdir=Path("/work/repo"),
        argv=["-m", "megatron_qwen", "train", f"--config-path={tmp_path / 'file_pretrain'}", "--config-name=config"],
        env=env,
    )


def _h100(**kw) -> ClusterConfig:
    base = dict(kind="slurm", partition="h100", account="proj", nodes=4, gpus_per_node=8, cpus_per_task=12,
                mem="0", time_limit="2-00:00:00", signal_lead_seconds=600,
                setup=["module load cuda/12.4", "source ~/venvs/mq/bin/activate"],
                sbatch_args=["--exclusive"], srun_args=["--cpu-bind=none"])
    base.update(kw)
    return ClusterConfig(**base)


def test_sbatch_header_has_the_resources_signal_requeue_and_logs(tmp_path):
    text = render_sbatch(_h100(), _job(tmp_path))
    options = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert options == [
        "--job-name=exp-file_pretrain", "--partition=h100", "--account=proj", "--nodes=4",
        "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12", "--mem=0", "--time=2-00:00:00",
        "--signal=B:USR1@600", "--requeue", "--open-mode=append",
        f"--output={tmp_path}/logs/file_pretrain-%j.out", f"--error={tmp_path}/logs/file_pretrain-%j.err",
        "--chdir=/work/repo", "--exclusive",
    ]


def test_script_body_runs_srun_directly_and_requeues_unless_finished(tmp_path):
    text = render_sbatch(_h100(), _job(tmp_path, WANDB_RUN_ID="abc123", WANDB_RESUME="allow"))
    assert "torchrun" not in text
    assert "srun \\\n  --kill-on-bad-exit=1 \\\n  --nodes=4 \\\n  --ntasks-per-node=8 \\\n  --cpu-bind=none" in text
    assert "python -m megatron_qwen train \\\n  --config-path=" in text
    assert "module load cuda/12.4\nsource ~/venvs/mq/bin/activate\n" in text
    assert "export WANDB_RUN_ID=abc123\nexport WANDB_RESUME=allow" in text
    assert f'export {FINISHED_ENV}="$STAGE_DIR/FINISHED"' in text
    assert "trap on_usr1 USR1" in text and 'kill -USR1 "$SRUN_PID"' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    # FINISHED is checked before the requeue, and the setup lines run before srun.
    assert text.index('if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then\n  log "stage finished"') < text.index(
        "scontrol requeue")
    assert text.index("module load") < text.index("srun \\")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_container_image_goes_to_srun(tmp_path):
    text = render_sbatch(_h100(container_image="nvcr.io#nvidia/pytorch:25.01-py3",
                               container_mounts=["/lustre:/lustre"]), _job(tmp_path))
    assert "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" in text
    assert "--container-mounts=/lustre:/lustre" in text and "--container-workdir=/work/repo" in text


def test_cpu_job_has_no_gpu_request(tmp_path):
    cluster = ClusterConfig(kind="slurm", tasks_per_node=2, time_limit="10")
    text = render_sbatch(cluster, _job(tmp_path))
    assert "--ntasks-per-node=2" in text and "gpus" not in text and "--partition" not in text
    assert world_size(cluster) == 2


def test_dependency_is_on_the_sbatch_command_line():
    assert sbatch_submit_command(Path("/r/s/job.sbatch")) == ["sbatch", "--parsable", "/r/s/job.sbatch"]
    assert sbatch_submit_command(Path("/r/s/job.sbatch"), after="41") == [
        "sbatch", "--parsable", "--dependency=afterok:41", "--kill-on-invalid-dep=yes", "/r/s/job.sbatch",
    ]


@pytest.mark.parametrize(
    "text, seconds",
    [("30", 1800), ("5:30", 330), ("04:00:00", 14400), ("2-00:00:00", 172800), ("1-2", 93600),
     ("1-02:30", 95400)],
)
def test_time_limits(text, seconds):
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize(
    "cluster, parallel, message",
    [
        (ClusterConfig(kind="pbs"), None, r"cluster.kind \('pbs'\)"),
        (ClusterConfig(kind="slurm", time_limit="10", signal_lead_seconds=600), None,
         r"signal_lead_seconds \(600\) must be shorter than cluster.time_limit \(10 = 600 s\)"),
        (ClusterConfig(kind="slurm", time_limit="1:00:00:00"), None, "not a Slurm time"),
        (ClusterConfig(kind="slurm", gpus_per_node=8, tasks_per_node=4), None, "one task per GPU"),
        (ClusterConfig(kind="local", nodes=2), None, "use cluster=slurm"),
        (ClusterConfig(kind="slurm", sbatch_args=["exclusive"]), None, "must be an option"),
        (ClusterConfig(kind="slurm", container_mounts=["/a:/a"]), None, "needs cluster.container_image"),
        (ClusterConfig(kind="slurm", nodes=1, gpus_per_node=8), ParallelConfig(tensor_model_parallel_size=3),
         r"cluster.nodes \(1\) x tasks per node \(8\) = 8 processes: world size \(8\) must be divisible"),
    ],
)
def test_validation_names_the_fields(cluster, parallel, message):
    with pytest.raises(ConfigError, match=message):
        validate_cluster(cluster, parallel)


def test_valid_h100_layout():
    parallel = ParallelConfig(tensor_model_parallel_size=4, pipeline_model_parallel_size=2)
    assert validate_cluster(_h100(), parallel) == 32
