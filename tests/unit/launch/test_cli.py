"""The launcher's command line: composition per stage, chaining, dry run, local runs, and its errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore

from megatron_qwen.config import Config
from megatron_qwen.launch import cli
from megatron_qwen.launch.stages import plan_stages

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config_dir(tmp_path) -> Path:
    """A small Hydra tree on the typed schema: the real cluster group plus two stages."""
    ConfigStore.instance().store(name="launch_test_schema", node=Config)
    root = tmp_path / "hydra"
    shutil.copytree(REPO / "megatron_qwen" / "configs" / "cluster", root / "cluster")
    (root / "stage").mkdir()
    for name in ("file_pretrain", "repo_pretrain"):
        (root / "stage" / f"{name}.yaml").write_text(f"name: {name}\n")
    (root / "config.yaml").write_text(
        "defaults:\n  - launch_test_schema\n  - cluster: local\n  - stage: file_pretrain\n  - _self_\n"
        "train:\n  train_iters: 4\nparallel:\n  tensor_model_parallel_size: 2\n"
    )
    return root


def test_each_stage_starts_from_the_previous_checkpoint(config_dir, tmp_path):
    stages = plan_stages(["cluster=slurm", "cluster.gpus_per_node=2"], ["file_pretrain", "repo_pretrain"],
                         tmp_path / "run", config_dir)
    first, second = stages
    assert (first.name, second.name) == ("file_pretrain", "repo_pretrain")
    assert second.config.stage.name == "repo_pretrain"
    assert first.config.checkpoint.dir == str(tmp_path / "run" / "file_pretrain" / "checkpoints")
    assert first.config.checkpoint.init_from == "none"
    assert second.config.checkpoint.init_from == "checkpoint"
    assert second.config.checkpoint.init_path == first.config.checkpoint.dir
    assert first.wandb_run_id != second.wandb_run_id and first.wandb_run_id.startswith("run-file_pretrain-")


def test_dry_run_prints_every_script_and_writes_nothing(config_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli.main(["cluster=slurm", "cluster.partition=gpu", "cluster.gpus_per_node=2",
                   "--stages", "file_pretrain,repo_pretrain", "--run-dir", str(run), "--dry-run",
                   "--config-dir", str(config_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and not run.exists()
    assert out.count("#!/bin/bash") == 2 and out.count("#SBATCH --partition=gpu") == 2
    assert "# megatron_qwen stage 1/2: file_pretrain" in out
    assert "# Submitted with: sbatch --parsable --dependency=afterok:<job id of file_pretrain> " in out
    assert f"--config-path={run}/repo_pretrain" in out


def test_submission_chains_with_afterok(config_dir, tmp_path, monkeypatch, capsys):
    # A stand-in sbatch on PATH records its arguments and answers like `sbatch --parsable`.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "sbatch").write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\necho "$(( $(wc -l < {calls}) + 100 ));cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "run"
    rc = cli.main(["cluster=slurm", "cluster.gpus_per_node=2", "--stages", "file_pretrain,repo_pretrain",
                   "--run-dir", str(run), "--after", "77", "--config-dir", str(config_dir)])
    assert rc == 0, capsys.readouterr().err
    first, second = calls.read_text().splitlines()
    assert first == f"--parsable --dependency=afterok:77 --kill-on-invalid-dep=yes {run}/file_pretrain/job.sbatch"
    assert second == f"--parsable --dependency=afterok:101 --kill-on-invalid-dep=yes {run}/repo_pretrain/job.sbatch"
    saved = yaml.safe_load((run / "repo_pretrain" / "config.yaml").read_text())
    assert saved["checkpoint"]["init_path"] == str(run / "file_pretrain" / "checkpoints")
    assert "hydra" not in saved
    assert "submitted job 102 after job 101" in capsys.readouterr().out
    # Submitting again skips a finished stage and starts the next one without a dependency.
    (run / "file_pretrain" / "FINISHED").write_text("finished\n")
    assert cli.main(["cluster=slurm", "cluster.gpus_per_node=2", "--stages", "file_pretrain,repo_pretrain",
                     "--run-dir", str(run), "--config-dir", str(config_dir)]) == 0
    assert calls.read_text().splitlines()[-1] == f"--parsable {run}/repo_pretrain/job.sbatch"


def test_local_dry_run_uses_torchrun_for_several_processes(config_dir, tmp_path, capsys):
    rc = cli.main(["cluster.tasks_per_node=2", "--run-dir", str(tmp_path / "run"), "--dry-run",
                   "--config-dir", str(config_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and "torch.distributed.run --standalone --nproc-per-node=2 -m megatron_qwen train" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["cluster=slurm", "cluster.gpus_per_node=3"], "stage train: cluster.nodes (1) x tasks per node (3) = 3"),
        (["cluster=pbs"], "Could not find 'cluster/pbs'"),
        (["cluster=slurm", "cluster.time_limit=5", "cluster.gpus_per_node=2"], "signal_lead_seconds (300)"),
        (["cluster=slurm", "cluster.gpus_per_node=2", "cluster.nodez=2"], "nodez"),
    ],
)
def test_bad_configs_fail_before_anything_is_written(config_dir, tmp_path, capsys, args, message):
    run = tmp_path / "run"
    assert cli.main([*args, "--run-dir", str(run), "--config-dir", str(config_dir)]) == 2
    assert message in capsys.readouterr().err and not run.exists()


def test_positional_that_is_not_an_override_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["file_pretrain"])
    assert "not a Hydra override" in capsys.readouterr().err


def test_stages_given_as_experiments_from_an_extra_config_dir(tmp_path):
    # The 7B example: a directory of experiment files searched on top of hydra/, one experiment per stage.
    stages = plan_stages(["cluster.partition=h100"],
                         ["experiment=stage1_file_pretrain", "experiment=stage3_long_context"],
                         tmp_path / "run", REPO / "examples" / "qwen25_coder_7b")
    first, second = stages
    assert (first.name, second.name) == ("stage1_file_pretrain", "stage3_long_context")
    assert first.config.checkpoint.init_from == "hf"  # the experiment's own choice for the first stage
    assert second.config.checkpoint.init_path == str(tmp_path / "run" / "stage1_file_pretrain" / "checkpoints")
    assert second.config.parallel.context_parallel_size == 4 and second.config.model.yarn.enabled
    assert first.config.cluster.partition == "h100" and first.config.cluster.nodes == 8
    # The W&B id is fixed by the stage directory: relaunching the same run continues the same W&B run.
    again = plan_stages(["cluster.partition=h100"], ["experiment=stage1_file_pretrain"], tmp_path / "run",
                        REPO / "examples" / "qwen25_coder_7b")
    assert again[0].wandb_run_id == first.wandb_run_id != second.wandb_run_id


def test_a_stage_named_twice_is_rejected(config_dir, tmp_path):
    with pytest.raises(Exception, match="names 'file_pretrain' twice"):
        plan_stages([], ["file_pretrain", "file_pretrain"], tmp_path / "run", config_dir)


def test_checked_in_7b_dry_run_is_what_the_launcher_prints():
    """examples/qwen25_coder_7b/sbatch_dry_run.sh is regenerated by launch.sh --dry-run (site variables unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STAGES", "RUNS", "PARTITION", "ACCOUNT", "IMAGE",
                                                                  "MOUNTS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", "examples/qwen25_coder_7b/launch.sh", "--dry-run"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.replace(str(REPO), "/path/to/megatron_qwen")
    expected = (REPO / "examples" / "qwen25_coder_7b" / "sbatch_dry_run.sh").read_text()
    assert printed == expected, "regenerate: bash examples/qwen25_coder_7b/launch.sh --dry-run (see its header)"
    assert printed.count("#!/bin/bash") == 6 and printed.count("#SBATCH --nodes=8") == 6
    assert "--dependency=afterok:<job id of stage5_sft_fine>" in printed
