"""DPO preference pairs: records -> paired ChatML sequences (offline, `--mode dpo`).

Why it exists: offline DPO (stage 3, docs/formats.md) compares the log-probability of a chosen and a rejected
answer to the same prompt. Both must be rendered exactly like SFT data (same ChatML, same loss mask) so
the policy is scored on the tokens it would generate.

Input record (JSONL), conversations in the OpenAI `messages` layout:
    {"prompt": [{"role": "system", ...}, {"role": "user", ...}, ...]  or "plain user text",
     "chosen": [{"role": "assistant", "content": ...}, ...]          or "plain answer text",
     "rejected": same as chosen}
The prompt must end with a user turn; each response starts with an assistant turn. Assistant turns inside
the prompt are history: they get no loss. Pairs whose two responses are identical are skipped.

On-disk layout (`megatron-qwen preprocess --mode dpo`): `{prefix}_text_document` and
`{prefix}_loss_mask_document` with ONE DOCUMENT PER PAIR made of EXACTLY TWO SEQUENCES: sequence 0 is
prompt + chosen, sequence 1 is prompt + rejected (the prompt tokens are stored twice). The loss mask is 1
on the response tokens (answers and their `<|im_end|>`), so the masked sum of per-token log-probs is the
response log-probability DPO needs. Pair i is therefore sequences 2i and 2i+1, and `PreferenceDataset`
checks that every document has exactly two sequences (a record is written whole or not at all).

The run-time reader of these files (pairs, padded and packed batches) is `training.datasets.preference`.
"""

from __future__ import annotations

from megatron_qwen.data.formats.chat import (
    ChatFormatError,
    Segment,
    fit_segments,
    normalize_messages,
    render_segments,
)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def _as_messages(value, field: str, default_role: str) -> list:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


def pair_messages(record: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) normalized messages; ChatFormatError naming the field when malformed."""
    for name in PAIR_FIELDS:
        if name not in record:
            raise ChatFormatError(f"missing field '{name}'")
    prompt = normalize_messages(_as_messages(record["prompt"], "prompt", "user"), "prompt")
    if prompt[-1]["role"] != "user":
        raise ChatFormatError(f"prompt[{len(prompt) - 1}] has role {prompt[-1]['role']!r}; the prompt must "
                              "end with a user turn")
    prompt = [{**m, "loss": False} for m in prompt]
    responses = []
    for name in ("chosen", "rejected"):
        msgs = normalize_messages(_as_messages(record[name], name, "assistant"), name)
        if msgs[0]["role"] != "assistant":
            raise ChatFormatError(f"{name}[0] has role {msgs[0]['role']!r}; a response starts with an "
                                  "assistant turn")
        responses.append(msgs)
    return prompt, responses[0], responses[1]


def encode_pair(record: dict, tokenizer, system_prompt: str | None = None) -> tuple[list[Segment], list[Segment]]:
    """Record -> (prompt + chosen, prompt + rejected) segments; `system_prompt` as in `chat.render_segments`."""
    prompt, chosen, rejected = pair_messages(record)
    if [(m["role"], m["content"]) for m in chosen] == [(m["role"], m["content"]) for m in rejected]:
        raise ChatFormatError("chosen and rejected are identical")
    return (render_segments(prompt + chosen, tokenizer, system_prompt),
            render_segments(prompt + rejected, tokenizer, system_prompt))


def fit_pair(chosen: list[Segment], rejected: list[Segment], max_tokens: int | None, overlong: str = "truncate"
             ) -> tuple[tuple[list[Segment], list[Segment]] | None, str]:
    """Fit both sequences (see `chat.fit_segments`); the pair is dropped if either would be."""
    c, c_outcome = fit_segments(chosen, max_tokens, overlong)
    r, r_outcome = fit_segments(rejected, max_tokens, overlong)
    if c is None or r is None:
        return None, "dropped"
    severity = ("fits", "truncated_turns", "truncated_tokens")
    return (c, r), max(c_outcome, r_outcome, key=severity.index)
