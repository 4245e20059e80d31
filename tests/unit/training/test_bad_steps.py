"""Bad steps: a NaN loss in one micro-batch skips that step's update on every rank, and the weights then
equal those of a run that never took that step; too many skips in a row stop the trainer with `latest`
left on the last good checkpoint."""

from __future__ import annotations

import math

from megatron_qwen.platform.spawn import run_workers

SEQ, STEPS, BAD = 16, 6, 4


def _poisoned(step_func, poison: bool):
    """A forward step whose second micro-batch's loss is NaN when `poison`."""
    calls = {"n": 0}

    def forward_step(data_iterator, model):
        output, loss_func = step_func(data_iterator, model)
        calls["n"] += 1
        if not (poison and calls["n"] == 2):
            return output, loss_func

        def nan_loss(out):
            total, count, report = loss_func(out)
            return total * float("nan"), count, {**report, "loss": report["loss"] * float("nan")}
        return output, nan_loss
    return forward_step


def _skip_versus_absent() -> dict:
    import torch

    from megatron_qwen.config import OptimConfig, ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.datasets.pretrain import LearnableMock
    from megatron_qwen.training.datasets.sampling import microbatches
    from megatron_qwen.training.step import build_optimizer, forward_step, train_step, wrap_model

    model, parallel = get_preset("tiny"), ParallelConfig()
    init_distributed(parallel, model, SEQ, seed=3)
    source = LearnableMock(model.vocab_size, SEQ, 1000, seed=3)
    runs = {}
    for name in ("skipped", "absent"):
        torch.manual_seed(0)
        chunks = build_model(model, parallel, SEQ)
        if name == "absent":
            chunks[0].load_state_dict(runs["skipped"]["initial"])
        initial = {k: v.clone() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}
        wrapped = wrap_model(chunks, parallel)
        optimizer = build_optimizer(wrapped, OptimConfig(lr=3e-3), parallel)
        losses, skipped = {}, []
        for step in range(STEPS):
            if name == "absent" and step == BAD:
                continue  # this run never sees the batch
            mbs = microbatches(source, step * 8, 8, 2, 0, 1, SEQ)
            out = train_step(wrapped, optimizer, mbs, SEQ, 2, _poisoned(forward_step, step == BAD))
            losses[step] = out.loss
            if out.skipped:
                skipped.append(step)
        runs[name] = {"initial": initial, "losses": losses, "skipped": skipped,
                      "final": {k: v.clone() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}}
    return {n: {k: v for k, v in r.items() if k != "initial"} for n, r in runs.items()}


def test_nan_in_one_micro_batch_skips_the_update_exactly():
    (r,) = run_workers(1, _skip_versus_absent)
    skipped, absent = r["skipped"], r["absent"]
    assert skipped["skipped"] == [BAD] and absent["skipped"] == []
    assert math.isnan(skipped["losses"][BAD])
    for step in range(STEPS):
        if step != BAD:
            assert skipped["losses"][step] == absent["losses"][step], step
    for key, value in skipped["final"].items():
        assert bool((value == absent["final"][key]).all()), f"{key} differs: the skipped step changed the weights"


def _stop_after_consecutive_skips(root: str) -> dict:
    from megatron_qwen.config import Config
    from megatron_qwen.training import trainer as trainer_mod

    cfg = Config()
    cfg.data.mock, cfg.data.seq_length = True, SEQ
    cfg.train.train_iters, cfg.train.log_interval, cfg.train.max_consecutive_skips = 12, 1, 3
    cfg.checkpoint.dir, cfg.checkpoint.save_interval = root, 2
    cfg.optim.warmup_steps = 0
    t = trainer_mod.Trainer(cfg, {}, "{}\n")
    honest, calls = t.objective.forward_step, {"n": 0}
    per_step = cfg.train.global_batch_size // cfg.train.micro_batch_size

    def forward_step(data_iterator, model):  # every micro-batch from step 5 on has a NaN loss
        output, loss_func = honest(data_iterator, model)
        calls["n"] += 1
        if calls["n"] <= 4 * per_step:
            return output, loss_func
        return output, lambda out: (lambda r: (r[0] * float("nan"), r[1], r[2]))(loss_func(out))
    t.objective.forward_step = forward_step
    try:
        t.train()
    except RuntimeError as err:
        return {"error": str(err), "skipped": t.skipped_steps}
    return {"error": None}


def test_consecutive_skips_stop_the_run_and_latest_stays_good(tmp_path):
    (r,) = run_workers(1, _stop_after_consecutive_skips, str(tmp_path))
    assert r["error"] and "3 consecutive steps (the last: 7)" in r["error"] and r["skipped"] == 3
    assert (tmp_path / "latest").read_text().strip() == "iter_0000004"  # saved before the bad steps, not after


def test_loss_spike_rule_judges_against_the_mean_of_a_full_window():
    from megatron_qwen.training.step import LossSpikeRule

    rule = LossSpikeRule(margin=0.5, window=3)
    assert rule.accept(100.0)  # no full window yet: nothing is judged
    for loss in (2.0, 2.2, 1.8):
        rule.record(loss)
    assert rule.accept(2.99) and not rule.accept(3.01)  # mean 2.0, margin 50%
    rule.record(4.0)  # the window slides: (2.2, 1.8, 4.0), mean 2.667
    assert rule.recent == [2.2, 1.8, 4.0] and rule.accept(3.99) and not rule.accept(4.01)
    assert LossSpikeRule(0.5, 3, recent=[9.0, 2.2, 1.8, 4.0]).recent == rule.recent  # restored from a checkpoint


def _spike_at_step_six(root: str) -> dict:
    from megatron_qwen.config import Config
    from megatron_qwen.training import trainer as trainer_mod

    cfg = Config()
    cfg.data.mock, cfg.data.seq_length = True, SEQ
    cfg.train.train_iters, cfg.train.log_interval = 8, 1
    cfg.train.loss_spike_margin, cfg.train.loss_spike_window = 0.5, 3
    cfg.checkpoint.dir = root
    cfg.optim.warmup_steps = 0
    t = trainer_mod.Trainer(cfg, {}, "{}\n")
    honest, calls = t.objective.forward_step, {"n": 0}
    per_step = cfg.train.global_batch_size // cfg.train.micro_batch_size

    def forward_step(data_iterator, model):  # step 6's loss is reported 4x too large
        output, loss_func = honest(data_iterator, model)
        calls["n"] += 1
        if 5 * per_step < calls["n"] <= 6 * per_step:
            def spiked(out):
                total, count, report = loss_func(out)
                reported = report["loss"].clone()  # [sum, count]: only the sum grows
                reported[0] *= 4
                return total * 4, count, {**report, "loss": reported}
            return output, spiked
        return output, loss_func
    t.objective.forward_step = forward_step
    result = t.train()
    return {"losses": result.losses, "skipped": t.skipped_steps, "recent": t.spike.recent}


def test_a_loss_spike_is_skipped_and_counted(tmp_path):
    (r,) = run_workers(1, _spike_at_step_six, str(tmp_path))
    losses = r["losses"]
    assert r["skipped"] == 1 and losses[6] > 1.5 * sum(losses[i] for i in (3, 4, 5)) / 3
    assert r["recent"] == [losses[5], losses[7], losses[8]]  # the spike never entered the window
    assert len(losses) == 8  # training went on
