"""YaRN logits equal transformers' Qwen2 beyond the original context; packed rows equal separate documents.

YaRN: original context 64, factor 4, a 256-token sequence (positions 64–255 are extrapolated): logits of
our GPTModel (megatron-core's `position_embedding_type="yarn"` with the seven `yarn_*` values from
`YarnConfig`, attention factor 0.1·ln 4 + 1 applied to cos and sin by megatron's attention) against
`Qwen2ForCausalLM` with `rope_parameters={rope_type: yarn, ...}` and the same weights.
Packing: per-token losses of three documents packed into one THD row (cu_seqlens) equal the losses of
each document run alone, with and without YaRN.
"""

import math

import pytest

from megatron_qwen.platform.spawn import run_workers
from tests.unit.model import _workers as w


def test_yarn_logits_match_transformers_beyond_original_context():
    (r,) = run_workers(1, w.yarn_logits_vs_hf, True)
    print(f"\nYaRN vs HF: max |dlogit| {r['max_diff']:.2e} (beyond {w.ORIGINAL}: {r['max_diff_beyond']:.2e}),"
          f" logit scale {r['scale']:.2f}, HF attention factor {r['attention_factor']:.6f}")
    assert r["attention_factor"] == pytest.approx(0.1 * math.log(w.FACTOR) + 1)
    assert r["scale"] > 1.0  # the comparison is not between near-zero logits
    assert r["max_diff_beyond"] < 1e-4 and r["max_diff"] < 1e-4


@pytest.mark.parametrize("yarn", [False, True], ids=["rope", "yarn"])
def test_packed_documents_equal_separate_runs(yarn):
    (r,) = run_workers(1, w.packed_vs_separate, (7, 13, 20), yarn)
    for i, (together, alone) in enumerate(zip(r["together"], r["alone"])):
        diff = max(abs(a - b) for a, b in zip(together, alone))
        print(f"\ndoc {i}: {len(alone)} tokens, mean loss packed {sum(together)/len(together):.6f} "
              f"alone {sum(alone)/len(alone):.6f}, max diff {diff:.2e}")
        assert together == pytest.approx(alone, abs=1e-5)
