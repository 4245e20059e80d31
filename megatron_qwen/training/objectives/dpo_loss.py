"""The DPO objective as a pure function of sequence log-probabilities, with its metrics.

Why it exists: the DPO objective (`dpo.py`) computes per-token log-probs of the policy and of the
frozen reference model on paired batches (`training.datasets.preference.collate_pairs`); everything DPO-specific is
here, small and tested against the formula:

    h      = beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]
    L_DPO  = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)        (eps: label smoothing, cDPO)
    L      = mean over pairs of L_DPO  +  sft_weight * mean over pairs of NLL(y_w | x) / |y_w|

`eps` > 0 assumes a share eps of the preference labels are flipped; the optional SFT term on the chosen
answer (per-token negative log-likelihood of the policy) keeps the chosen likelihood from falling.

Metrics (detached): rewards/chosen = beta * (log pi - log ref) on y_w, rewards/rejected likewise on y_l,
rewards/margin = their difference, rewards/accuracy = share of pairs with chosen reward strictly greater,
plus the policy log-probs and the loss terms.

Per-token log-probs come from the model's own loss (−vocab_parallel_cross_entropy, exact under tensor
parallelism); `sequence_logps` sums them over the loss mask (the response tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logps(per_token: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, S] token log-probs, [N, S] 0/1 mask) -> (summed log-prob per row [N], token count per row [N])."""
    mask = loss_mask.to(per_token.dtype)
    return (per_token * mask).sum(-1), mask.sum(-1)


@dataclass
class DPOOutput:
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, torch.Tensor]  # scalars, detached


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             sft_weight: float = 0.0, chosen_tokens: torch.Tensor | None = None) -> DPOOutput:
    """DPO loss over a batch of pairs; the four inputs are [B] summed response log-probs.

    `chosen_tokens` ([B] response token counts of the chosen answers) is needed when `sft_weight` > 0.
    """
    shapes = {t.shape for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"dpo_loss needs four [B] tensors of one shape, got {sorted(map(tuple, shapes))}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
    reference_chosen, reference_rejected = reference_chosen.detach(), reference_rejected.detach()
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    h = beta * (chosen_logratio - rejected_logratio)
    per_pair = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    dpo = per_pair.mean()
    loss = dpo
    metrics = {"loss/dpo": dpo.detach()}
    if sft_weight > 0:
        if chosen_tokens is None or chosen_tokens.shape != policy_chosen.shape:
            raise ValueError("sft_weight > 0 needs chosen_tokens: the [B] token counts of the chosen answers")
        if (chosen_tokens <= 0).any():
            raise ValueError("chosen_tokens must be positive (a chosen answer without trained tokens?)")
        sft = (-policy_chosen / chosen_tokens.to(policy_chosen.dtype)).mean()
        loss = dpo + sft_weight * sft
        metrics["loss/sft"] = sft.detach()
    chosen_rewards = (beta * chosen_logratio).detach()
    rejected_rewards = (beta * rejected_logratio).detach()
    metrics.update({
        "loss": loss.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    })
    return DPOOutput(loss, metrics)
