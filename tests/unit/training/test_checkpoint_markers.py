"""The `latest` marker decides; newer or partial dirs are ignored with a warning; rotation keeps K."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from megatron_qwen.training.checkpoint import LATEST, find_latest, iter_name, resolve_checkpoint, rotate


def make(root: Path, *names: str, latest: str | None = None) -> None:
    for n in names:
        (root / n).mkdir(parents=True)
        (root / n / "metadata.json").write_text("{}")
    if latest:
        (root / LATEST).write_text(latest + "\n")


def test_no_checkpoint(tmp_path):
    assert find_latest(tmp_path) is None and find_latest(None) is None


def test_latest_wins_and_incomplete_saves_are_reported(tmp_path, caplog):
    make(tmp_path, iter_name(2), iter_name(4), iter_name(6) + ".partial", iter_name(8), latest=iter_name(4))
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path) == tmp_path / iter_name(4)
    text = caplog.text
    assert "iter_0000006.partial" in text and "iter_0000008" in text and "iter_0000002" not in text


def test_dirs_without_a_marker_are_never_used(tmp_path, caplog):
    make(tmp_path, iter_name(2) + ".partial")
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path) is None
    assert "did not complete" in caplog.text


def test_marker_naming_a_missing_dir_is_an_error(tmp_path):
    (tmp_path / LATEST).write_text(iter_name(3))
    with pytest.raises(FileNotFoundError, match="iter_0000003"):
        find_latest(tmp_path)


def test_rotate_keeps_last_k_up_to_latest(tmp_path):
    make(tmp_path, *(iter_name(i) for i in (2, 4, 6, 8)), iter_name(10) + ".partial", latest=iter_name(6))
    rotate(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == [
        iter_name(4), iter_name(6), iter_name(8), iter_name(10) + ".partial"]


def test_resolve_checkpoint_accepts_root_or_iteration(tmp_path):
    make(tmp_path, iter_name(5), latest=iter_name(5))
    assert resolve_checkpoint(tmp_path) == tmp_path / iter_name(5)
    assert resolve_checkpoint(tmp_path / iter_name(5)) == tmp_path / iter_name(5)
    with pytest.raises(FileNotFoundError, match="init_path"):
        resolve_checkpoint(tmp_path / "nothing")
