"""Post-training (recipe stage 3): SFT with the loss on answers only, coarse then fine, then offline DPO.

The training loop stays the one of pretraining; a stage's `stage.objective` ("sft" or "dpo") selects,
through the hooks here:
- `STEP_FUNCS`: the forward-step function (SFT reuses pretraining's masked per-token loss; DPO: dpo.py),
- `build_sources()`: the sample sources (sft.py: packed conversations; dpo.py: pairs + reference log-probs),
- `step_metrics()` / `eval_metrics()`: extra values logged with the loss / the validation loss (DPO rewards,
  margins, accuracy; `val/...` on held-out pairs from `post.dpo.valid_prefix`),
- `validate_post()`: the rules these objectives add to the config check.
Sources have a `collate(samples, seq_length)` method that `training.data.microbatches` uses to build
micro-batches (packed THD rows of conversations or of whole DPO pairs, or padded [B, S] / [2B, S] blocks).
"""

from __future__ import annotations

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.training.post.dpo import dpo_forward_step, pop_metrics
from megatron_qwen.training.step import forward_step

OBJECTIVES = ("sft", "dpo")
STEP_FUNCS = {"sft": forward_step, "dpo": dpo_forward_step}


def build_sources(cfg: Config, chunks, resumed: bool, train_samples: int, eval_samples: int):
    """(train, validation) sources of a post-training stage; `chunks` are the policy's (DPO reference pass)."""
    if cfg.stage.objective == "sft":
        from megatron_qwen.training.post.sft import build_sft_sources

        return build_sft_sources(cfg, train_samples, eval_samples)
    from megatron_qwen.training.post.dpo import build_dpo_sources

    return build_dpo_sources(cfg, chunks, resumed)


def step_metrics(cfg: Config) -> dict[str, float]:
    """Objective-specific metrics since the last call (collective: called on every rank at log steps)."""
    return pop_metrics() if cfg.stage.objective == "dpo" else {}


def eval_metrics(cfg: Config) -> dict[str, float]:
    """Objective-specific metrics of the evaluation just run, as `val/...` (collective, like step_metrics)."""
    return {f"val/{k}": v for k, v in pop_metrics("val").items()} if cfg.stage.objective == "dpo" else {}


def validate_post(cfg: Config, dp: int | None = None) -> None:
    """The post-training rules (called by training.validate for objectives sft/dpo); errors name the keys."""
    from megatron_qwen.data.packing import OVERLONG
    from megatron_qwen.training.post.sft import parse_blend

    obj, t, d = cfg.stage.objective, cfg.train, cfg.data
    mode = "sft" if obj == "sft" else "dpo"
    try:
        blend = parse_blend(d.blend)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not blend:
        raise ConfigError(f"stage.objective={obj} needs data.blend: prefixes written by "
                          f"tools/preprocess_data.py --mode {mode} (mock data has no loss mask)")
    if cfg.parallel.context_parallel_size > 1 and obj == "dpo":
        raise ConfigError("stage.objective=dpo does not support parallel.context_parallel_size > 1 yet; "
                          "set it to 1 (DPO sequences are short)")
    if obj == "sft":
        s = cfg.post.sft
        if d.packed_sequences and t.micro_batch_size != 1:
            raise ConfigError(f"data.packed_sequences=true needs train.micro_batch_size=1 (got {t.micro_batch_size}): "
                              "a packed row already holds many conversations; raise data.seq_length instead")
        if s.overlong not in OVERLONG:
            raise ConfigError(f"post.sft.overlong ({s.overlong!r}) must be one of {OVERLONG}")
        if not 0.0 <= s.fim_share < 1.0:
            raise ConfigError(f"post.sft.fim_share ({s.fim_share}) must be in [0, 1)")
        if s.fim_share > 0 and not s.fim_prefix:
            raise ConfigError(f"post.sft.fim_share={s.fim_share} needs post.sft.fim_prefix (an --mode sft-fim dataset)")
        return
    p = cfg.post.dpo
    if len(blend) != 1:
        raise ConfigError(f"stage.objective=dpo reads one preference dataset: data.blend has {len(blend)} prefixes")
    if p.beta <= 0:
        raise ConfigError(f"post.dpo.beta ({p.beta}) must be > 0")
    if not 0.0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"post.dpo.label_smoothing ({p.label_smoothing}) must be in [0, 0.5)")
    if p.sft_weight < 0:
        raise ConfigError(f"post.dpo.sft_weight ({p.sft_weight}) must be >= 0")
    if d.packed_sequences:
        if t.micro_batch_size != 1:
            raise ConfigError(f"stage.objective=dpo with data.packed_sequences=true needs train.micro_batch_size=1 "
                              f"(got {t.micro_batch_size}): a packed row already holds several whole pairs and "
                              "train.global_batch_size counts rows; raise data.seq_length instead")
        return
    if t.micro_batch_size % 2:
        raise ConfigError(f"with stage.objective=dpo, train.micro_batch_size ({t.micro_batch_size}) counts sequences "
                          "(a chosen and a rejected per pair) and must be even")
    if dp is not None and (t.global_batch_size // dp) % 2:
        raise ConfigError(f"with stage.objective=dpo, train.global_batch_size ({t.global_batch_size}) / data-parallel "
                          f"size ({dp}) counts sequences and must be even")
