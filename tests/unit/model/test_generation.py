"""The decoding loop's pieces that need no model: token selection (greedy, top-k, top-p, seeded), stops, checks.

The loop itself is proven against transformers in tests/distributed/test_generation_layouts.py.
"""

from __future__ import annotations

import pytest
import torch

from megatron_qwen.model.generation import KVCacheDecoder, SamplingParams, _select


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert _select(logits, SamplingParams(), None).tolist() == [1, 0]


def test_top_p_keeps_the_smallest_set_reaching_p_and_samples_in_proportion():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    ids = _select(logits, SamplingParams(temperature=1.0, top_p=0.75), g)
    counts = torch.bincount(ids, minlength=4).float() / len(ids)
    assert counts[2] == 0 and counts[3] == 0  # 0.5 + 0.3 already reach 0.75
    assert counts[0].item() == pytest.approx(0.5 / 0.8, abs=0.03)


def test_top_k_and_temperature():
    logits = torch.tensor([[1.0, 3.0, 2.0]]).expand(500, 3)
    g = torch.Generator().manual_seed(1)
    assert set(_select(logits, SamplingParams(temperature=1.0, top_k=2), g).tolist()) == {1, 2}
    cold = _select(logits, SamplingParams(temperature=1e-4), g)
    assert set(cold.tolist()) == {1}


def test_the_same_seed_gives_the_same_draws():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=1.0, top_p=0.9)
    a = _select(logits, params, torch.Generator().manual_seed(7))
    b = _select(logits, params, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_stops():
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)  # noqa: E731
    params = SamplingParams(max_tokens=5, stop=("cd",), stop_ids=frozenset({25}))
    out: list[int] = []
    assert KVCacheDecoder._check(out, 1, params, decode) is None and out == [1]
    assert KVCacheDecoder._check(out, 2, params, decode) is None
    done = KVCacheDecoder._check(out, 3, params, decode)
    assert done.finish_reason == "stop" and done.text == "b" and done.tokens == [1, 2, 3]
    out = [0]
    done = KVCacheDecoder._check(out, 25, params, decode)
    assert done.finish_reason == "stop" and done.stop_id == 25 and done.tokens == [0]
    out = [0, 0, 0, 0]
    assert KVCacheDecoder._check(out, 0, params, decode).finish_reason == "length"


@pytest.mark.parametrize("kwargs", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                    dict(top_k=-1)])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
