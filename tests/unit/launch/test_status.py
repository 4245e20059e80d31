"""`megatron-qwen status`: each stage's state, last step and loss, checkpoint, skipped steps and restarts,
read from the files the launcher and the trainer write."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from megatron_qwen.cli import main
from megatron_qwen.launch.status import run_status

NOW = time.time()


def stage(run: Path, name: str, steps: int = 0, age_s: float = 0.0, finished: bool = False, latest: str | None = None,
          log: str | None = None, skipped: int = 0, out: str | None = None) -> None:
    d = run / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("{}\n")
    if steps:
        metrics = d / "checkpoints" / "metrics.jsonl"
        lines = [json.dumps({"step": s, "loss": 5.0 - s / 10, "skipped_steps": skipped}) for s in range(1, steps + 1)]
        metrics.write_text("\n".join(lines + ['{"step": 9, "lo']) + "\n")  # a line cut by a crash
        os.utime(metrics, (NOW - age_s, NOW - age_s))
    if latest:
        (d / "checkpoints" / "latest").write_text(latest + "\n")
    if finished:
        (d / "FINISHED").write_text("finished\n")
    if log is not None:
        (run / "logs").mkdir(exist_ok=True)
        (run / "logs" / f"{name}-101.err").write_text(log)
    if out is not None:  # the batch script's own lines
        (run / "logs").mkdir(exist_ok=True)
        (run / "logs" / f"{name}-101.out").write_text(out)


def test_states_steps_checkpoints_and_restarts(tmp_path, capsys):
    stage(tmp_path, "file_pretrain", steps=8, age_s=3600, finished=True, latest="iter_0000008",
          log="resuming from x/iter_0000004\n")
    stage(tmp_path, "repo_pretrain", steps=3, age_s=30, latest="iter_0000002", skipped=1)
    stage(tmp_path, "long_context", steps=2, age_s=3600, log="step 2 | loss=4.8\nTraceback (most recent call last):\n"
          "  File x\nRuntimeError: NCCL error\n")
    stage(tmp_path, "sft_coarse", steps=2, age_s=3600, log="stop signal received: saving at step 2 and exiting\n")
    stage(tmp_path, "sft_fine")
    launch = "[launch 2026-12-02T04:29:07+00:00] job 101 (restart 0): "
    stage(tmp_path, "dpo", steps=2, age_s=3600, log="Traceback (most recent call last):\nRuntimeError: x\n",
          out=launch + "starting on vm\n" + launch + "trainer failed with exit status 7 (crash 1 of at most 2); "
          "requeueing to resume from the last checkpoint\n")
    stage(tmp_path, "dpo_lora", steps=2, age_s=3600, log="Traceback (most recent call last):\nRuntimeError: x\n",
          out=launch + "trainer failed with exit status 7 (crash 3, cluster.max_crash_requeues=2); not requeueing\n")
    (tmp_path / "file_pretrain" / "crashes").write_text("1\n")  # the batch script requeued one crash
    rows = {r.stage: r for r in run_status(tmp_path, now=NOW)}
    assert {n: r.state for n, r in rows.items()} == {
        "file_pretrain": "finished", "repo_pretrain": "running", "long_context": "failed", "sft_coarse": "stopped",
        "sft_fine": "pending", "dpo": "requeued", "dpo_lora": "failed"}
    assert (rows["file_pretrain"].step, rows["file_pretrain"].loss) == (8, 5.0 - 0.8)
    assert rows["file_pretrain"].checkpoint == "iter_0000008" and rows["file_pretrain"].restarts == 1
    assert rows["file_pretrain"].crashes == 1 and rows["repo_pretrain"].crashes == 0
    assert rows["repo_pretrain"].skipped_steps == 1 and rows["sft_fine"].step is None
    assert main(["status", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["stage", "state", "step"] and len(table) == 8
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert [json.loads(x)["state"] for x in capsys.readouterr().out.splitlines()][0] == "finished"


def test_missing_or_empty_run_dir_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
