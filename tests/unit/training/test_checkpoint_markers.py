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


def make_verified(root: Path, *names: str, latest: str) -> None:
    """Checkpoints with a weights-like shard and a manifest, as `save` writes them."""
    from megatron_qwen.checkpointing import manifest

    for k, n in enumerate(names):
        (root / n / "rng").mkdir(parents=True)
        (root / n / "metadata.json").write_text("{}")
        (root / n / "__0_0.distcp").write_bytes(bytes(range(256)) * (64 + k))
        (root / n / "rng" / "rank0.pt").write_bytes(b"rng")
        manifest.write_manifest(root / n, manifest.describe(root / n))
    (root / LATEST).write_text(latest + "\n")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "extra"])
def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog, damage):
    make_verified(tmp_path, iter_name(4), iter_name(8), latest=iter_name(8))
    shard = tmp_path / iter_name(8) / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "delete":
        shard.unlink()
    else:
        (tmp_path / iter_name(8) / "__1_0.distcp").write_bytes(b"stray")
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path) == tmp_path / iter_name(4)
    reason = {"flip": "CRC-32", "truncate": "truncated", "delete": "missing", "extra": "not in the manifest"}[damage]
    assert f"{iter_name(8)} is damaged" in caplog.text and reason in caplog.text
    with pytest.raises(RuntimeError, match="is damaged"):  # an explicit init path has no fallback
        resolve_checkpoint(tmp_path / iter_name(8))


def test_intact_checkpoints_pass_and_all_damaged_is_an_error(tmp_path):
    make_verified(tmp_path, iter_name(4), iter_name(8), latest=iter_name(8))
    assert find_latest(tmp_path) == tmp_path / iter_name(8)
    for n in (iter_name(4), iter_name(8)):
        (tmp_path / n / "rng" / "rank0.pt").write_bytes(b"RNG")  # same size, other contents
    with pytest.raises(RuntimeError, match="no intact checkpoint"):
        find_latest(tmp_path)
