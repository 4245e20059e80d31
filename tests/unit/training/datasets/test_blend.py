"""The 70:20:10 blend config: megatron-core's BlendedMegatronDatasetBuilder samples tokens in those shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_qwen.data.indexed import IndexedWriter
from megatron_qwen.training.datasets.blend import build_blended, load_blend, parse_blend, sampled_token_shares

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIG = Path(__file__).resolve().parents[4] / "megatron_qwen" / "configs" / "data" / "code_blend.yaml"
EOD = 3999


def _dataset(prefix: Path, low: int, docs: int, rng: np.random.Generator) -> None:
    """Documents whose tokens lie in [low, low + 1000), so a sampled token tells its source."""
    w = IndexedWriter(prefix, np.uint16)
    for _ in range(docs):
        w.add_document(np.append(rng.integers(low, low + 1000, rng.integers(20, 300)), EOD))
    w.finish()
    w.commit()


def test_blend_70_20_10_sampled_token_shares(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name, low in (("code", 0), ("text", 1000), ("math", 2000)):
        _dataset(tmp_path / f"{name}_text_document", low, 300, rng)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    pairs = parse_blend(load_blend(CONFIG), check_files=True)
    prefixes, weights = [p for _, p in pairs], [w / sum(w for w, _ in pairs) for w, _ in pairs]
    assert [Path(p).name for p in prefixes] == ["code_text_document", "text_text_document", "math_text_document"]
    assert weights == pytest.approx([0.7, 0.2, 0.1])
    seq = 64
    blended = build_blended(prefixes, weights, seq, num_samples=3000, eod=EOD, cache_dir=str(tmp_path / "cache"),
                            vocab_size=4000)
    assert sampled_token_shares(blended, seq) == pytest.approx([0.7, 0.2, 0.1], abs=0.005)
    # count the tokens of actual samples by their value range, independently of megatron's index
    counts = np.zeros(3)
    for i in range(0, len(blended), 3):
        tokens = np.asarray(blended[i]["tokens"])
        tokens = tokens[tokens != EOD]
        counts += np.bincount(tokens // 1000, minlength=3)[:3]
    assert (counts / counts.sum()) == pytest.approx([0.7, 0.2, 0.1], abs=0.02)


def test_blend_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="weight, prefix"):
        parse_blend([70, "a", 20], check_files=False)
    with pytest.raises(ValueError, match="positive"):
        parse_blend([0, "a"], check_files=False)
    with pytest.raises(FileNotFoundError, match="megatron-qwen preprocess"):
        parse_blend([1, str(tmp_path / "missing_text_document")], check_files=True)
