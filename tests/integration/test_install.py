"""`pip install .` into a fresh virtual environment, then the command line from a directory outside the
checkout: `--help` lists every command, and `megatron-qwen train experiment=tiny_cpu` trains there.

The new environment reuses this environment's already-installed dependencies (a .pth file pointing at
its site-packages; no network), but the project itself is a real wheel install: the test checks that
`megatron_qwen` is imported from the new environment and that the Hydra configs came with it.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from megatron_qwen.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_trains_outside_the_checkout(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    target = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # dependencies only
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), "--no-compile", str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "megatron_qwen" / "configs" / "experiment" / "tiny_cpu.yaml").is_file()
    assert (target / "megatron_qwen" / "synth" / "prompts" / "answer.txt").is_file()  # synth's prompts ship too
    script = target / "bin" / "megatron-qwen"
    assert script.is_file(), "pip installed no megatron-qwen script"
    work = tmp_path / "elsewhere"
    work.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([py, "-c", "import megatron_qwen; print(megatron_qwen.__file__)"], cwd=work,
                           capture_output=True, text=True, env=environ)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr

    cli = [str(py), "-m", "megatron_qwen"]
    help_ = subprocess.run([*cli, "--help"], cwd=work, capture_output=True, text=True, env=environ)
    assert help_.returncode == 0
    assert all(f"  {name} " in help_.stdout for name in COMMANDS), help_.stdout

    train = subprocess.run([*cli, "train", "experiment=tiny_cpu", "train.train_iters=3", "train.log_interval=1",
                            "checkpoint.dir=run"], cwd=work, capture_output=True, text=True, env=environ, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and steps[-1]["loss"] < steps[0]["loss"]
    assert (work / "run" / "latest").read_text().strip() == "iter_0000003"
    # The user-facing noise is gone: no Transformer Engine / Apex warnings, one line about the CPU platform.
    assert "Transformer Engine and Apex are not installed" not in train.stderr + train.stdout
