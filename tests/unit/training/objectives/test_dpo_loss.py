"""The DPO loss against the formula computed by hand (math, not torch) on hand-made log-probs."""

import math

import pytest
import torch

from megatron_qwen.training.objectives.dpo_loss import dpo_loss, sequence_logps

# Two pairs. beta = 0.5:
#   pair 0: h = 0.5 * ((-1.0 + 1.5) - (-2.0 + 1.5)) = 0.5      (policy prefers chosen more than the reference)
#   pair 1: h = 0.5 * ((-3.0 + 2.0) - (-1.0 + 1.5)) = -0.75    (it prefers the rejected one)
PC, PR, RC, RR = [-1.0, -3.0], [-2.0, -1.0], [-1.5, -2.0], [-1.5, -1.5]
H = [0.5, -0.75]


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_loss_and_metrics_match_the_formula():
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.5)
    # -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077, -log sigmoid(-0.75) = log(1 + e^0.75) = 1.136871
    assert out.loss.item() == pytest.approx((0.4740769841801067 + 1.1368710061148999) / 2, abs=1e-12)
    m = out.metrics
    assert m["rewards/chosen"].item() == pytest.approx((0.25 + -0.5) / 2)      # beta * (pc - rc)
    assert m["rewards/rejected"].item() == pytest.approx((-0.25 + 0.25) / 2)   # beta * (pr - rr)
    assert m["rewards/margin"].item() == pytest.approx((0.5 + -0.75) / 2)
    assert m["rewards/accuracy"].item() == 0.5
    assert m["logps/chosen"].item() == -2.0 and m["logps/rejected"].item() == -1.5
    assert "loss/sft" not in m


def test_label_smoothing_and_sft_term():
    eps, weight = 0.1, 0.2
    counts = [2.0, 4.0]
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.5, label_smoothing=eps, sft_weight=weight,
                   chosen_tokens=t(counts))
    dpo = sum(-(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h) for h in H) / 2
    sft = (1.0 / 2.0 + 3.0 / 4.0) / 2                                          # per-token NLL of chosen = 0.625
    assert out.metrics["loss/dpo"].item() == pytest.approx(dpo, abs=1e-12)
    assert out.metrics["loss/sft"].item() == pytest.approx(0.625)
    assert out.loss.item() == pytest.approx(dpo + weight * sft, abs=1e-12)


def test_gradients_match_the_derivative_and_skip_the_reference():
    pc, pr, rc, rr = t(PC, True), t(PR, True), t(RC, True), t(RR, True)
    dpo_loss(pc, pr, rc, rr, beta=0.5).loss.backward()
    # dL/dpc_i = -beta * sigmoid(-h_i) / B ; dL/dpr_i = +beta * sigmoid(-h_i) / B
    want = [-0.5 / (1 + math.exp(h)) / 2 for h in H]
    assert pc.grad.tolist() == pytest.approx(want, abs=1e-12)
    assert pr.grad.tolist() == pytest.approx([-g for g in want], abs=1e-12)
    assert rc.grad is None and rr.grad is None


def test_ties_are_not_counted_as_correct():
    same = t([-1.0, -1.0])
    assert dpo_loss(same, same, same, same).metrics["rewards/accuracy"].item() == 0.0
    assert dpo_loss(same, same, same, same).loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 0.0}, "beta must be > 0"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"sft_weight": 1.0}, "needs chosen_tokens"),
    ({"sft_weight": 1.0, "chosen_tokens": torch.tensor([0.0, 1.0])}, "positive"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), **kwargs)
    with pytest.raises(ValueError, match="four \\[B\\] tensors"):
        dpo_loss(t(PC), t([1.0]), t(RC), t(RR))


def test_sequence_logps_sum_the_masked_token_logprobs():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])   # [1, 3, 2]
    labels = torch.tensor([[1, 0, 1]])
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    assert per_token[0].tolist() == pytest.approx([math.log(3 / 4), math.log(4 / 5), math.log(1 / 2)])
    total, count = sequence_logps(per_token, torch.tensor([[0, 1, 1]]))
    assert total.item() == pytest.approx(math.log(4 / 5) + math.log(1 / 2)) and count.item() == 2
