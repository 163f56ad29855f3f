"""The training loop: exact gradient accumulation, determinism, kill-and-resume, divergence,
early stopping, Ctrl-C, the schedule, parameter groups and the metrics file.

Everything runs on synthetic data with a tiny model (the `tiny` preset with a 32-token context), so
the properties are about the engine, not the data modules. tests/test_distributed.py and
tests/test_checkpoint.py reuse `make_trainer`.
"""
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilm import checkpoint as ckpt
from minilm.config import PRESETS
from minilm.loss import nll_loss
from minilm.model.gpt import GPT
from minilm.training.distributed import DistInfo
from minilm.training.optim import lr_at, make_optimizer, param_groups
from minilm.training.trainer import (Batch, EarlyStopping, TrainSettings, Trainer, TrainingDiverged, TrainingInterrupted,
                            estimate_loss)

MODEL = replace(PRESETS["tiny"].model, block_size=32, dropout=0.1)
TESTS_DIR = Path(__file__).parent


# ----------------------------------------------------------------------------- synthetic data
def ragged_rows(seed: int, n: int, max_len: int = 24):
    """n examples of random length with random 0/1 loss masks (some rows count nothing)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(2, max_len + 1, (1,), generator=g))
        ids = torch.randint(0, MODEL.vocab_size, (length,), generator=g)
        mask = (torch.rand(length, generator=g) < 0.6).long()
        if i % 3 == 2:
            mask.zero_()  # an example with nothing to learn: not part of N
        rows.append((ids, mask))
    rows[0][1][-1] = 1  # at least one counted token overall
    return rows


def collate_rows(rows) -> Batch:
    """Shift for next-token prediction and right-pad with id 0 under a zero mask."""
    width = max(len(ids) for ids, _ in rows) - 1
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    targets, loss_mask = torch.zeros_like(idx), torch.zeros_like(idx)
    for r, (ids, mask) in enumerate(rows):
        idx[r, :len(ids) - 1], targets[r, :len(ids) - 1], loss_mask[r, :len(ids) - 1] = ids[:-1], ids[1:], mask[1:]
    return Batch(idx, targets, loss_mask)


def periodic_tokens(n: int = 4000, period: int = 37, seed: int = 0) -> np.ndarray:
    """A learnable stream: a random sequence repeated, so the loss falls within a few steps."""
    return np.tile(np.random.default_rng(seed).integers(0, MODEL.vocab_size, period), n // period + 1)[:n]


def stream_batches(batch_size: int, seed: int = 0):
    """The pretraining batch source over periodic_tokens (minilm.stages.training.pretrain_batches)."""
    from minilm.stages.pretrain import pretrain_batches
    return pretrain_batches(periodic_tokens(), batch_size, MODEL.block_size, seed)


def make_trainer(run_dir, *, batches=None, evaluate=None, save_best=None, dist=DistInfo(), model=None,
                 dtype=torch.float32, **schedule):
    """A Trainer for the tiny model; `schedule` overrides the TrainSettings's fields."""
    defaults = dict(stage="pretrain", max_iters=6, lr=3e-3, min_lr=3e-4, warmup_iters=2, batch_size=4,
                    grad_accum=1, eval_interval=3, log_interval=2, seed=0)
    schedule = TrainSettings(**{**defaults, **schedule})
    if model is None:
        torch.manual_seed(0)
        model = GPT(MODEL)
    if batches is None:
        batches = stream_batches(schedule.batch_size, schedule.seed)
    if evaluate is None:
        val = [batches(10_000, 0), batches(10_001, 0)]  # fixed batches no step ever draws
        evaluate = lambda m: estimate_loss(m, val, schedule.normalize, "cpu", dtype)  # noqa: E731
    if save_best is None:
        def save_best(m, stage_dir, info):
            ckpt.save_weights(stage_dir / ckpt.MODEL_FILE, ckpt.trainable_state(m, False), m.config)
    return Trainer(model, schedule, batches, evaluate, save_best, run_dir, dist=dist, dtype=dtype,
                   peak_flops_override=1e12, log=lambda *_: None)


def weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ----------------------------------------------------------------------------- accumulation
@settings(max_examples=4)
@given(seed=st.integers(0, 10_000), normalize=st.sampled_from(["token", "sequence"]),
       micro=st.sampled_from([2, 3]), per_micro=st.sampled_from([1, 2]))
def test_accumulated_gradient_equals_one_big_batch(tmp_path_factory, seed, normalize, micro, per_micro):
    """k micro-batches of b (each padded to its own length) give the gradient of one batch of k*b,
    which is the gradient of nll_loss on that batch: the scaling W_m / W is exact."""
    rows = ragged_rows(seed, micro * per_micro)
    big = collate_rows(rows)
    run_dir = tmp_path_factory.mktemp("acc")

    def grads(batch_size, grad_accum, batches):
        torch.manual_seed(0)
        model = GPT(replace(MODEL, dropout=0.0)).double()
        trainer = make_trainer(run_dir, model=model, batches=batches, batch_size=batch_size,
                               grad_accum=grad_accum, normalize=normalize)
        trainer.accumulate_gradients(0)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    accumulated = grads(per_micro, micro, lambda step, m: collate_rows(rows[m * per_micro:(m + 1) * per_micro]))
    one_batch = grads(micro * per_micro, 1, lambda step, m: big)
    torch.manual_seed(0)
    model = GPT(replace(MODEL, dropout=0.0)).double()
    nll_loss(model(big.idx), big.targets, big.loss_mask, normalize=normalize).backward()
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item() + 1e-30
        assert (accumulated[name] - p.grad).abs().max().item() <= 1e-9 * scale, name
        assert (one_batch[name] - p.grad).abs().max().item() <= 1e-9 * scale, name


def test_micro_batch_with_nothing_to_learn_is_skipped_exactly(tmp_path):
    """A micro-batch whose mask is all zero contributes zero, and does not shift the scaling."""
    rows = ragged_rows(1, 4)
    empty = [(ids, torch.zeros_like(mask)) for ids, mask in rows[:2]]
    torch.manual_seed(0)
    model = GPT(replace(MODEL, dropout=0.0)).double()
    trainer = make_trainer(tmp_path, model=model, batch_size=2, grad_accum=2, normalize="sequence",
                           batches=lambda step, m: collate_rows(empty if m == 0 else rows[2:]))
    trainer.accumulate_gradients(0)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    only = collate_rows(rows[2:])
    nll_loss(model(only.idx), only.targets, only.loss_mask, normalize="sequence").backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- determinism and resume
def test_fixed_seed_is_bit_for_bit_repeatable(tmp_path):
    a = make_trainer(tmp_path / "a")
    a.fit()
    b = make_trainer(tmp_path / "b")
    b.fit()
    assert_same_weights(weights(a), weights(b))
    c = make_trainer(tmp_path / "c", seed=1)  # another seed: other batches and dropout masks
    c.fit()
    assert not torch.equal(weights(a)["transformer.h.0.mlp.c_fc.weight"],
                           weights(c)["transformer.h.0.mlp.c_fc.weight"])


def test_training_lowers_the_validation_loss(tmp_path):
    result = make_trainer(tmp_path, max_iters=12, eval_interval=12).fit()
    first, last = result.history[0]["val_loss"], result.history[-1]["val_loss"]
    assert last < first - 0.5, (first, last)


def _child(run_dir: str, max_iters: int, threads: int) -> None:
    """Run in a subprocess by the kill test: a slow run that checkpoints every step."""
    torch.set_num_threads(threads)
    batches = stream_batches(4)

    def slow(step, micro):
        time.sleep(0.15)  # so the parent can kill it mid-way
        return batches(step, micro)
    make_trainer(run_dir, batches=slow, max_iters=max_iters, ckpt_interval=1).fit()


def test_killed_and_resumed_run_reaches_the_same_weights(tmp_path):
    max_iters = 12
    reference = make_trainer(tmp_path / "ref", max_iters=max_iters)
    reference.fit()

    run_dir = tmp_path / "killed"
    code = f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_trainer; " \
           f"test_trainer._child({str(run_dir)!r}, {max_iters}, {torch.get_num_threads()})"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    latest = run_dir / "pretrain.partial" / "checkpoints" / ckpt.LATEST  # an unfinished run writes there
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_000004":
            break
        time.sleep(0.01)
    assert child.poll() is None, f"the child ended before it could be killed: {child.stderr.read().decode()}"
    child.send_signal(signal.SIGKILL)  # no chance to clean up: whatever it was writing stays half-written
    child.wait()
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert 4 <= killed_at < max_iters

    resumed = make_trainer(run_dir, max_iters=max_iters)
    result = resumed.fit(resume=True)
    assert result.step == max_iters
    assert_same_weights(weights(reference), weights(resumed))
    # the metrics file has each step once, as if the run had never stopped
    steps = [(r["kind"], r["step"]) for r in map(json.loads, (run_dir / "pretrain" / "metrics.jsonl").open())]
    assert len(steps) == len(set(steps))
    ref_steps = [(r["kind"], r["step"]) for r in map(json.loads, (tmp_path / "ref" / "pretrain" / "metrics.jsonl").open())]
    assert steps == ref_steps


def test_resume_of_a_finished_run_does_nothing_more(tmp_path):
    first = make_trainer(tmp_path)
    first.fit()
    again = make_trainer(tmp_path)
    result = again.fit(resume=True)
    assert result.step == 6
    assert_same_weights(weights(first), weights(again))


def test_resume_continues_to_a_larger_max_iters(tmp_path):
    make_trainer(tmp_path, max_iters=4, warmup_iters=2).fit()
    result = make_trainer(tmp_path, max_iters=8, warmup_iters=2).fit(resume=True)
    assert result.step == 8


# ----------------------------------------------------------------------------- failures and stops
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = GPT(MODEL)
    batches = stream_batches(4)
    poison = {"on": False}
    model.transformer.ln_f.register_forward_hook(lambda mod, inp, out: out * float("nan") if poison["on"] else out)

    def source(step, micro):
        poison["on"] = step == 4
        return batches(step, micro)
    trainer = make_trainer(tmp_path, model=model, batches=source, max_iters=8, eval_interval=3)
    with pytest.raises(TrainingDiverged, match=r"step 4: .*not finite.*lower\s+--lr"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not taken
    folder = ckpt.latest_checkpoint(tmp_path / "pretrain.partial" / "checkpoints")  # the run did not finish
    assert folder.name == "step_000003"
    tensors, _ = ckpt.read_weights(folder / ckpt.WEIGHTS)
    assert all(torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])  # muon: both optimizers' states checkpointed
def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_identically(tmp_path, optimizer):
    reference = make_trainer(tmp_path / "ref", max_iters=8, optimizer=optimizer)
    reference.fit()
    batches = stream_batches(4)

    def source(step, micro):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers
        return batches(step, micro)
    interrupted = make_trainer(tmp_path / "run", batches=source, max_iters=8, optimizer=optimizer)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler in a terminal, SIG_IGN under nohup
    with pytest.raises(TrainingInterrupted, match="step 5.*--resume"):
        interrupted.fit()
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before is back
    assert ckpt.latest_checkpoint(tmp_path / "run" / "pretrain.partial" / "checkpoints").name == "step_000005"
    resumed = make_trainer(tmp_path / "run", max_iters=8, optimizer=optimizer)
    resumed.fit(resume=True)
    assert_same_weights(weights(reference), weights(resumed))


@pytest.mark.parametrize("previous", [signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL,
                                      lambda signum, frame: None])
@pytest.mark.parametrize("how", ["finished", "raised"])
def test_stop_requests_put_back_whatever_handler_was_there(previous, how):
    """However the tests are started (a terminal, nohup, a CI runner ignoring SIGINT), a run leaves
    the signal handlers as it found them, also when it ends with an exception."""
    from minilm.training.stop_requests import StopRequests
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in saved:
            signal.signal(sig, previous)
        with pytest.raises(RuntimeError) if how == "raised" else contextlib.nullcontext():
            with StopRequests(trainer=None):  # its handler is never called here
                assert signal.getsignal(signal.SIGINT) is not previous  # ours is in place meanwhile
                if how == "raised":
                    raise RuntimeError("the run failed")
        assert all(signal.getsignal(sig) is previous for sig in saved)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_early_stopping_on_a_scripted_metric_series(tmp_path):
    series = iter([5.0, 4.0, 4.5, 3.9, 4.2, 4.1, 4.0, 1.0])  # improvements at evals 0, 1, 3; then 3 misses
    saved = []
    trainer = make_trainer(tmp_path, max_iters=100, eval_interval=2, patience=3,
                           evaluate=lambda m: {"val_loss": next(series)},
                           save_best=lambda m, d, info: saved.append(info["step"]))
    result = trainer.fit()
    assert result.stopped_early
    assert result.step == 12  # evaluations at steps 0, 2, ..., 12; the 7th (step 12) is the 3rd miss
    assert result.best == 3.9 and result.best_step == 6
    assert saved == [0, 2, 6]  # the stable output is rewritten only on improvement


def test_early_stopping_maximizes_pass_at_1():
    early = EarlyStopping("pass@1", patience=2)
    assert [early.update(v) for v in (0.1, 0.3, 0.2, 0.3)] == [True, True, False, False]
    assert early.should_stop and early.best == 0.3
    assert not EarlyStopping("val_loss", patience=0, bad_evals=99).should_stop  # 0 = never


def test_unknown_early_stopping_metric_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, metric="pass@1")
    with pytest.raises(ValueError, match="'pass@1' is not among"):
        trainer.fit()


# ----------------------------------------------------------------------------- schedule and groups
@given(lr=st.floats(1e-5, 1.0), ratio=st.floats(0.0, 1.0), warmup=st.integers(1, 50), extra=st.integers(1, 500))
def test_lr_schedule_warms_up_linearly_then_decays_to_the_floor(lr, ratio, warmup, extra):
    min_lr, total = lr * ratio, warmup + extra
    values = [lr_at(s, lr, min_lr, warmup, total) for s in range(total + 5)]
    for s in range(warmup):
        assert math.isclose(values[s], lr * (s + 1) / warmup)
    decay = values[warmup:total]
    assert math.isclose(decay[0], lr)  # the cosine starts at the peak
    assert all(a >= b - 1e-15 for a, b in zip(decay, decay[1:]))  # never rises
    assert all(0 <= v <= lr * (1 + 1e-12) for v in values)
    assert all(v >= min_lr * (1 - 1e-12) for v in values[warmup:])
    assert all(v == min_lr for v in values[total:])


def test_weight_decay_only_on_matrices_not_biases_norms_or_position_table():
    model = GPT(MODEL)
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "transformer.wte.weight" in decay["names"] and "transformer.h.0.attn.c_attn.weight" in decay["names"]
    assert "transformer.wpe.weight" in no_decay["names"]
    assert all(n.endswith(("bias", "wpe.weight")) or ".ln_" in n for n in no_decay["names"])
    every = [p for g in (decay, no_decay) for p in g["params"]]
    assert len(every) == len(list(model.parameters())) and len({id(p) for p in every}) == len(every)


# ----------------------------------------------------------------------------- logs and metrics
def test_progress_lines_and_metrics_file(tmp_path):
    lines = []
    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=2)
    trainer.log = lines.append
    trainer.fit()
    train_lines = [line for line in lines if line.startswith("pretrain step ")]
    assert len(train_lines) == 2 and train_lines[-1].startswith("pretrain step 4/4 | loss ")
    for field in ("lr ", "tok/s", "MFU ", "ms/step", "left "):
        assert field in train_lines[-1]
    assert lines[-1].startswith("pretrain done: 4 steps")
    records = [json.loads(l) for l in (tmp_path / "pretrain" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 4]
    assert all(r["loss"] > 0 and r["tok_per_s"] > 0 for r in records if r["kind"] == "train")


def test_plot_draws_the_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from minilm.plot import plot_run
    make_trainer(tmp_path, max_iters=4, eval_interval=2).fit()
    out = plot_run(tmp_path)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(MODEL)
    pair = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu", kind="muon")
    muon_names = [n for g in pair.optimizers["muon"].param_groups for n in g["names"]]
    adamw_names = [n for g in pair.optimizers["adamw"].param_groups for n in g["names"]]
    assert muon_names and all(n.startswith("transformer.h.") and n.endswith("weight") and ".ln_" not in n
                              for n in muon_names)
    assert "transformer.wte.weight" in adamw_names  # the embedding (and tied head) is not a hidden matrix
    assert sorted(muon_names + adamw_names) == sorted(n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="built for AdamW"):
        make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu", groups=param_groups(model.named_parameters(), 0.1),
                       kind="muon")

