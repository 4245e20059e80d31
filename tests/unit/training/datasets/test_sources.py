"""Post-training sources and rules without process groups: blends, packed/padded SFT batches, DPO pair
batches, the DPO loss function's averaging contract, and the config rules with the keys they name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.training.datasets.blend import parse_blend
from megatron_qwen.training.datasets.preference import PairRows, PreferenceDataset
from megatron_qwen.training.datasets.sft import PackedSFTDataset, SFTSource, blend_schedule
from megatron_qwen.training.objectives.dpo import DPO
from megatron_qwen.training.objectives.dpo_loss import dpo_loss
from megatron_qwen.training.validate import validate_config
from tests.unit.training._toy import write_dpo, write_sft


def test_parse_blend_forms():
    assert parse_blend(["a", "b"]) == [(1.0, "a"), (1.0, "b")]
    assert parse_blend([3, "a", 1, "b"]) == [(3.0, "a"), (1.0, "b")]
    assert parse_blend(None) == []


def test_blend_schedule_meets_shares_in_every_prefix():
    which, within = blend_schedule([0.7, 0.2, 0.1], 1000)
    for n in (10, 100, 1000):
        counts = np.bincount(which[:n], minlength=3)
        assert np.abs(counts - np.array([0.7, 0.2, 0.1]) * n).max() <= 1.0
    for d in range(3):  # each dataset is read in order 0, 1, 2, ...
        assert (within[which == d] == np.arange((which == d).sum())).all()


def test_packed_sft_batch_is_one_thd_row(tmp_path):
    ds = PackedSFTDataset(write_sft(str(tmp_path / "sft"), 40, seed=1), 64, 0)
    batch = SFTSource([ds], [1.0], 10, packed=True).collate([ds[0]], 64)
    assert batch["tokens"].shape == (1, 64) and batch["attention_mask"] is None
    psp = batch["packed_seq_params"]
    assert psp.qkv_format == "thd" and torch.equal(psp.cu_seqlens_q, batch["cu_seqlens"])
    # the loss is on answers only: the mask is 1 exactly where the label is an answer token or its END
    labels, mask = batch["labels"][0], batch["loss_mask"][0]
    assert mask.sum() > 0
    assert ((labels >= 110) | (labels == 4))[mask.bool()].all()


def test_padded_sft_batch_rows(tmp_path):
    ds = PackedSFTDataset(write_sft(str(tmp_path / "sft"), 10, seed=1), 32, 0, pack=False)
    batch = SFTSource([ds], [1.0], 10, packed=False).collate([ds[0], ds[1]], 32)
    assert batch["tokens"].shape == (2, 32) and batch["attention_mask"].shape == (1, 1, 32, 32)
    assert "packed_seq_params" not in batch


def test_fim_share_mixes_the_fim_dataset(tmp_path):
    a = PackedSFTDataset(write_sft(str(tmp_path / "a"), 20, seed=1), 32, 0, pack=False)
    b = PackedSFTDataset(write_sft(str(tmp_path / "b"), 20, seed=2), 32, 0, pack=False)
    src = SFTSource([a, b], [0.9, 0.1], 200, packed=False)
    assert np.bincount(src.which, minlength=2).tolist() == [180, 20]


def test_dpo_rows_pair_up_chosen_first(tmp_path):
    pairs = PreferenceDataset(write_dpo(str(tmp_path / "dpo"), 6, seed=3))
    rows = PairRows(pairs, 24, 0, shuffle=False, seed=0)
    rows.reference = torch.arange(12, dtype=torch.float64).view(6, 2)
    batch = rows.collate([rows[j] for j in range(2, 6)], 24)  # pairs 1 and 2
    assert batch["tokens"].shape == (4, 24) and batch["num_pairs"] == 2
    assert batch["reference_logps"].tolist() == [2.0, 4.0, 3.0, 5.0]  # chosen 1, chosen 2, rejected 1, rejected 2
    chosen1, rejected1 = pairs[1]["chosen"][0], pairs[1]["rejected"][0]
    assert batch["tokens"][0, :len(chosen1) - 1].tolist() == chosen1[:-1].tolist()
    assert batch["tokens"][2, :len(rejected1) - 1].tolist() == rejected1[:-1].tolist()
    with pytest.raises(ValueError, match="whole pairs"):
        rows.collate([rows[1], rows[2]], 24)


def test_dpo_loss_reports_every_metric_per_pair():
    torch.manual_seed(0)
    b, s = 3, 8
    nll = torch.rand(2 * b, s, requires_grad=True)
    mask = (torch.rand(2 * b, s) > 0.3).float()
    ref = torch.randn(2 * b)
    cfg = Config()
    cfg.post.dpo.beta, cfg.post.dpo.label_smoothing, cfg.post.dpo.sft_weight = 0.5, 0.1, 0.2
    objective = DPO(cfg)
    batch = {"loss_mask": mask, "reference_logps": ref, "num_pairs": b}
    total, count, report = objective.loss(batch, nll)
    logps = -(nll * mask).sum(-1)
    want = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta=0.5, label_smoothing=0.1, sft_weight=0.2,
                    chosen_tokens=mask.sum(-1)[:b])
    assert int(count) == b
    assert float(total.detach()) == pytest.approx(float(want.loss) * b, rel=1e-6)
    assert set(report) == set(objective.report_keys)
    assert report["loss"].tolist() == pytest.approx([float(want.loss) * b, b], rel=1e-6)
    for key in objective.metrics:  # [metric x pairs, pairs]: one reduction gives the mean over pairs
        assert report[key].tolist() == pytest.approx([float(want.metrics.get(key, 0.0)) * b, b], rel=1e-6)
    assert "dpo" not in batch and "metrics_scope" not in batch  # no hyperparameters or scopes in batches


def post_cfg(objective: str, **kw) -> Config:
    cfg = Config()
    cfg.data.seq_length = 32
    cfg.stage.objective = objective
    cfg.data.blend = ["/data/x"]
    cfg.train.micro_batch_size, cfg.train.global_batch_size = (1, 8) if objective == "sft" else (2, 8)
    cfg.data.packed_sequences = objective == "sft"
    for path, value in kw.items():
        section, key = path.split("__", 1)
        obj = getattr(cfg, section)
        for part in key.split("__")[:-1]:
            obj = getattr(obj, part)
        setattr(obj, key.split("__")[-1], value)
    return cfg


def test_valid_post_configs():
    validate_config(post_cfg("sft"), world_size=1)
    validate_config(post_cfg("dpo"), world_size=2)


@pytest.mark.parametrize("objective,kw,world,message", [
    ("sft", {"data__blend": None}, None, "stage.objective=sft needs data.blend"),
    ("sft", {"train__micro_batch_size": 2}, None, "data.packed_sequences=true needs train.micro_batch_size=1"),
    ("sft", {"post__sft__fim_share": 0.1}, None, "post.sft.fim_share=0.1 needs post.sft.fim_prefix"),
    ("sft", {"post__sft__fim_share": 1.0}, None, "post.sft.fim_share (1.0) must be in [0, 1)"),
    ("sft", {"post__sft__overlong": "cut"}, None, "post.sft.overlong ('cut')"),
    ("dpo", {"data__blend": ["/a", "/b"]}, None, "data.blend has 2 prefixes"),
    ("dpo", {"train__micro_batch_size": 1, "train__global_batch_size": 7}, None, "train.micro_batch_size (1) counts sequences"),
    ("dpo", {"train__global_batch_size": 8}, 8, "train.global_batch_size (8) / data-parallel size (8)"),
    ("dpo", {"post__dpo__beta": 0.0}, None, "post.dpo.beta (0.0) must be > 0"),
    ("dpo", {"post__dpo__label_smoothing": 0.5}, None, "post.dpo.label_smoothing (0.5)"),
    ("dpo", {"data__packed_sequences": True}, None, "data.packed_sequences=true needs train.micro_batch_size=1 (got 2)"),
])
def test_post_rule(objective, kw, world, message):
    with pytest.raises(ConfigError) as err:
        validate_config(post_cfg(objective, **kw), world_size=world)
    assert message in str(err.value)
