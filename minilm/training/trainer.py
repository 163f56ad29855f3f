"""The training loop shared by pretraining and fine-tuning.

One optimizer step, with grad_accum micro-batches m = 0..M-1 (spread over the ranks):

    W_m    = counted tokens of micro-batch m      (normalize="token", pretraining)
           = examples of m with a counted token   (normalize="sequence", fine-tuning's per-example loss)
    loss_m = (sum of -log p over m's counted tokens) / (W_0 + ... + W_{M-1})
    grad   = sum_m d loss_m / d theta

so the accumulated gradient is exactly that of one batch holding all M micro-batches, whatever
their padding (a per-batch mean averaged over micro-batches would weigh a token of a short
micro-batch more). Under DDP the total W is summed over ranks first, and each rank's loss is
multiplied by the world size because DDP averages gradients.

Then: clip the gradient norm, check it is finite (else stop, naming the step), take the optimizer step
at lr_at(step). Every batch is a pure function of (step, micro-batch index), and the random draws
of a micro-batch (dropout) come from the global generator seeded with (seed, step, micro) just
before it runs. So the run's state at a step boundary is the weights, the optimizer state and the
step number, which is what a checkpoint holds: a resumed run repeats the uninterrupted one bit for
bit, and a run on N processes computes what one process would (up to summation order).

Around the steps: an evaluation every eval_interval steps and at the end, early stopping after
`patience` evaluations without improvement of the chosen metric, the best weights written to the
stage's stable file at each improvement, checkpoints, one log line per log_interval, metrics in
metrics.jsonl (drawn by `python -m minilm.plot RUN_DIR`), and Ctrl-C / SIGTERM saving a checkpoint.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn

from minilm import checkpoint as ckpt, rundir, seeds
from minilm.loss import head_sequence_nll, head_sequence_stats
from minilm.model.kv_cache import shared_prefix_length
from minilm.runtime import autocast, format_duration, peak_flops
from minilm.training.distributed import DistInfo, all_reduce_sum, barrier, broadcast_flag, sync_context
from minilm.training.early_stopping import EarlyStopping
from minilm.training.optim import lr_at, make_optimizer, set_lr
from minilm.training.stop_requests import StopRequests

# A shared start is computed in a pass of its own; worth it only when it saves a tenth of the positions.
SHARE_MIN_SAVING = 0.1

class Batch(NamedTuple):
    idx: torch.Tensor  # (B, T) input ids
    targets: torch.Tensor  # (B, T) next-token ids
    loss_mask: Optional[torch.Tensor] = None  # (B, T) 1 where the target counts; None = all count


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is left untouched."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can continue with --resume."""


@dataclass(frozen=True)
class TrainSettings:
    """What a training loop needs; pretraining and fine-tuning fill it from RunConfig differently."""
    stage: str  # sub-directory of the run: "pretrain" or "finetune"
    max_iters: int
    lr: float
    min_lr: float
    warmup_iters: int
    batch_size: int  # sequences per micro-batch
    grad_accum: int  # micro-batches per optimizer step, over all ranks together
    eval_interval: int
    log_interval: int
    ckpt_interval: int = 0  # steps between checkpoints; 0 = at each evaluation
    normalize: str = "token"  # "token" (pretraining) or "sequence" (per-example, fine-tuning)
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still computed, to detect divergence)
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    optimizer: str = "adamw"  # "adamw" or "muon" (Muon for the blocks' matrices, AdamW for the rest)
    metric: str = "val_loss"  # the early-stopping metric
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    seed: int = 1337


def loss_weight(batch: Batch, normalize: str) -> int:
    """W_m of the module docstring: counted tokens, or examples with at least one counted token."""
    if batch.loss_mask is None:
        return batch.targets.numel() if normalize == "token" else batch.targets.size(0)
    counted = batch.loss_mask != 0
    return int(counted.sum()) if normalize == "token" else int(counted.any(dim=1).sum())


@torch.no_grad()
def estimate_loss(model: nn.Module, batches, normalize: str, device, dtype) -> dict[str, float]:
    """Exact validation loss over batches of (idx, targets[, loss_mask]): sums first, one division.

    Returns val_loss (per token or per example, as `normalize`), val_token_loss, val_ppl
    (exp of the per-token loss) and val_token_acc.
    """
    was_training = model.training
    model.eval()
    nll, tokens, examples, correct = 0.0, 0, 0, 0
    for batch in batches:
        batch = Batch(*batch)
        idx, targets = batch.idx.to(device), batch.targets.to(device)
        mask = None if batch.loss_mask is None else batch.loss_mask.to(device)
        with autocast(torch.device(device), dtype):  # the head only where the loss counts
            shared = shared_prefix_length(idx, SHARE_MIN_SAVING)
            hidden = model(idx, return_hidden=True, shared_prefix=shared)
            nll_sum, n_tokens, hits = head_sequence_stats(hidden, model.lm_head, targets, mask)
        nll += nll_sum.sum().item()
        tokens += int(n_tokens.sum())
        examples += int((n_tokens > 0).sum())
        correct += int(hits.sum())
    model.train(was_training)
    if tokens == 0:
        raise ValueError("the validation set has no counted token; check the split and the masks")
    token_loss = nll / tokens
    return {"val_loss": token_loss if normalize == "token" else nll / examples,
            "val_token_loss": token_loss, "val_ppl": math.exp(min(token_loss, 50.0)),
            "val_token_acc": correct / tokens}


@dataclass
class TrainResult:
    step: int  # optimizer steps taken in total
    best: Optional[float]  # best value of the early-stopping metric
    best_step: Optional[int]
    stopped_early: bool
    history: list = field(default_factory=list)  # the evaluations: dicts with "step" and metrics


class Trainer:
    """Runs one stage. The caller provides the model (LoRA applied / layers frozen as wanted) and:

    batches(step, micro) -> Batch      a pure function: the micro-batch `micro` of step `step`
    evaluate(model) -> dict            validation metrics, including settings.metric
    save_best(model, out_dir, info)    writes the stage's stable output file(s) into out_dir (the
                                       run's <stage>.partial/, which replaces <stage>/ once the run
                                       finishes); called at each improvement of the metric
    share_prefix: compute a start all rows share once (GPT.forward); False if a step draws noise.
    """

    def __init__(self, model: nn.Module, settings: TrainSettings, batches: Callable[[int, int], Batch],
                 evaluate: Callable[[nn.Module], dict], save_best: Callable, run_dir, *,
                 device="cpu", dtype=torch.float32, dist: DistInfo = DistInfo(), compile: bool = False,
                 share_prefix: bool = True, param_groups: Optional[list] = None, run_info: Optional[dict] = None,
                 peak_flops_override: float = 0.0, log: Callable[[str], None] = print):
        self.raw_model, self.settings = model, settings
        self.batches, self.evaluate, self.save_best = batches, evaluate, save_best
        self.stage_dir = Path(run_dir) / settings.stage  # the finished stage, replaced only at the end
        self.work_dir = rundir.partial_dir(self.stage_dir)  # where this run writes until then
        self.device, self.dtype, self.dist = torch.device(device), dtype, dist
        self.run_info = dict(run_info or {})  # config, tokenizer and corpus hashes: saved with checkpoints
        self.seq_len: Optional[int] = None  # of the last micro-batch trained on
        self.log = log if dist.is_main else (lambda *_: None)
        self.optimizer = make_optimizer(model, settings.lr, settings.weight_decay, settings.betas,
                                        self.device.type, groups=param_groups, kind=settings.optimizer)
        self.model = model  # what the steps call: compiled and/or DDP-wrapped; saving uses raw_model
        self.share_prefix = share_prefix and not compile  # a compiled graph has one shape per call
        if compile:
            self.model = torch.compile(self.model)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)
        self.micro_batches = dist.micro_batches(settings.grad_accum)
        self.peak_flops_override = peak_flops_override
        self.early = EarlyStopping(settings.metric, settings.patience)
        self.step, self.best_step, self.evaluated_step = 0, None, -1
        self.history: list[dict] = []
        self._stop_requested = False

    # ------------------------------------------------------------------ one optimizer step
    def accumulate_gradients(self, step: int) -> tuple[float, int]:
        """Forward and backward over this rank's micro-batches of `step`, gradients scaled as in the
        module docstring. Returns (this rank's mean loss, tokens processed by all ranks)."""
        s, model = self.settings, self.model
        batches = [Batch(*self.batches(step, m)) for m in self.micro_batches]
        local_weight = sum(loss_weight(b, s.normalize) for b in batches)
        total_weight = all_reduce_sum(local_weight, self.dist, self.device)
        if total_weight == 0:
            raise ValueError(f"step {step}: no counted target token in the whole batch; check the loss masks")
        scale = self.dist.world_size / total_weight  # DDP averages over ranks; we want the global sum / W
        nll_total, tokens = torch.zeros((), device=self.device), 0
        for i, (micro, batch) in enumerate(zip(self.micro_batches, batches)):
            torch.manual_seed(seeds.dropout_seed(s.seed, step, micro))  # whichever rank runs it
            idx, targets = self._to_device(batch.idx), self._to_device(batch.targets)
            mask = None if batch.loss_mask is None else self._to_device(batch.loss_mask)
            with sync_context(model, sync=i == len(batches) - 1), autocast(self.device, self.dtype):
                # (B, T, C), the head runs where the loss counts; a system turn all rows share runs once
                shared = shared_prefix_length(idx, SHARE_MIN_SAVING) if self.share_prefix else 0
                hidden = model(idx, return_hidden=True, shared_prefix=shared)
                nll_sum, _ = head_sequence_nll(hidden, self.raw_model.lm_head, targets, mask)  # (B,) summed -log p
                loss = nll_sum.sum() * scale
            loss.backward()
            nll_total += nll_sum.sum().detach()
            tokens += idx.numel() - (idx.size(0) - 1) * shared  # positions computed: MFU counts work done
            self.seq_len = idx.size(1)  # for MFU: attention's cost grows with it
        return nll_total.item() / max(local_weight, 1), tokens * self.dist.world_size

    def train_step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step: lr, gradients, clipping, divergence check, update. (loss, grad norm, tokens)."""
        s = self.settings
        set_lr(self.optimizer, lr_at(step, s.lr, s.min_lr, s.warmup_iters, s.max_iters))
        loss, tokens = self.accumulate_gradients(step)
        max_norm = s.grad_clip if s.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            [p for p in self.raw_model.parameters() if p.grad is not None], max_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"{s.stage} step {step}: loss {loss} / gradient norm {grad_norm} is not finite; "
                f"the last good checkpoint in {self.work_dir / 'checkpoints'} is kept. Try a lower "
                f"--lr (now {s.lr:g}), a longer warm-up, --grad_clip 1.0, --dtype float32, or check the data")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, tokens

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True) if t.device.type == "cpu" else t
        return t.to(self.device)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> TrainResult:
        s = self.settings
        if self.dist.is_main:
            rundir.recover_stage(self.stage_dir)
        resumed = resume and self._resume()
        if not resumed and self.dist.is_main:  # a fresh start: whatever an unfinished run left goes
            shutil.rmtree(self.work_dir, ignore_errors=True)  # (stale adapters would outrank new weights)
        barrier(self.dist)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        peak, peak_source = peak_flops(self.device, self.dtype, self.peak_flops_override)
        n_trainable = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        self.log(f"{s.stage}: {n_trainable:,} trainable parameters, {s.max_iters} steps of "
                 f"{s.batch_size} x {s.grad_accum} sequences, device {self.device} "
                 f"{str(self.dtype)[6:]}, {self.dist.world_size} process(es); MFU against {peak / 1e12:.2f} "
                 f"TFLOP/s ({peak_source})")
        start_step, started = self.step, time.perf_counter()
        interval_time, interval_tokens, interval_steps = 0.0, 0, 0  # since the last log line
        stopped_early = False
        with StopRequests(self):
            while True:
                if self.step != self.evaluated_step and (
                        self.step % s.eval_interval == 0 or self.step == s.max_iters):
                    stopped_early = self._evaluate_and_checkpoint()
                if self.step >= s.max_iters or stopped_early:
                    break
                t0 = time.perf_counter()
                loss, grad_norm, tokens = self.train_step(self.step)
                interval_time += time.perf_counter() - t0
                interval_tokens += tokens
                interval_steps += 1
                self.step += 1
                if self.step % s.log_interval == 0 or self.step == s.max_iters:
                    self._log_train(loss, grad_norm, interval_tokens / interval_time, peak,
                                    interval_time / interval_steps)
                    interval_time, interval_tokens, interval_steps = 0.0, 0, 0
                if s.ckpt_interval and self.step % s.ckpt_interval == 0:
                    self._checkpoint()
                if broadcast_flag(self._stop_requested, self.dist, self.device):
                    self._checkpoint()
                    raise TrainingInterrupted(
                        f"{s.stage} interrupted at step {self.step}; checkpoint saved in "
                        f"{self.work_dir / 'checkpoints'}; continue with --resume")
        barrier(self.dist)
        if self.dist.is_main:
            rundir.publish_stage(self.stage_dir)  # finished: now it replaces the stage's last outputs
        barrier(self.dist)
        elapsed = time.perf_counter() - started
        best = "n/a" if self.early.best is None else f"{self.early.best:.4f} at step {self.best_step}"
        self.log(f"{s.stage} done: {self.step - start_step} steps in {format_duration(elapsed)}"
                 f"{' (stopped early)' if stopped_early else ''}; best {s.metric} {best}; "
                 f"outputs in {self.stage_dir}")
        return TrainResult(self.step, self.early.best, self.best_step, stopped_early, self.history)

    def _log_train(self, loss: float, grad_norm: float, tok_per_s: float, peak: float, step_time: float):
        s = self.settings
        lr = self.optimizer.param_groups[0]["lr"]
        mfu = self.raw_model.estimate_mfu(tok_per_s / self.dist.world_size, peak, self.seq_len) \
            if hasattr(self.raw_model, "estimate_mfu") else float("nan")
        eta = format_duration(step_time * (s.max_iters - self.step))
        self.log(f"{s.stage} step {self.step}/{s.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                 f"grad {grad_norm:.2f} | {tok_per_s / 1e3:.1f}k tok/s | MFU {100 * mfu:.1f}% | "
                 f"{1e3 * step_time:.0f} ms/step | left {eta}")
        # On a GPU the process's RSS says little about the model's memory: record the allocator's peak.
        cuda = {"cuda_peak_bytes": torch.cuda.max_memory_allocated(self.device)} if self.device.type == "cuda" else {}
        self._record({"kind": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tok_per_s": tok_per_s, "mfu": mfu, "step_ms": 1e3 * step_time, **cuda})

    def _evaluate_and_checkpoint(self) -> bool:
        """Evaluate (rank 0), save the best weights on improvement, checkpoint. True = stop early."""
        s, stop = self.settings, False
        if self.dist.is_main:
            metrics = {k: float(v) for k, v in self.evaluate(self.raw_model).items()}
            if s.metric not in metrics:
                raise ValueError(f"early-stopping metric {s.metric!r} is not among the evaluation's "
                                 f"metrics {sorted(metrics)}; choose one of them")
            improved = self.early.update(metrics[s.metric])
            if improved:
                self.best_step = self.step
                self.save_best(self.raw_model, self.work_dir, {"step": self.step, **metrics})
            self.history.append({"step": self.step, **metrics})
            self._record({"kind": "eval", "step": self.step, **metrics, "best": improved})
            shown = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.log(f"{s.stage} eval step {self.step} | {shown}"
                     f"{' | best so far' if improved else f' | no improvement ({self.early.bad_evals}/{s.patience})'}")
            stop = self.early.should_stop
            if stop:
                self.log(f"{s.stage}: early stopping, {s.metric} did not improve for {s.patience} evaluations")
        self.evaluated_step = self.step
        self._checkpoint()
        return broadcast_flag(stop, self.dist, self.device)

    # ------------------------------------------------------------------ checkpoints and metrics
    def _checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        state = {**self.run_info, "stage": self.settings.stage, "evaluated_step": self.evaluated_step,
                 "best": self.early.best, "best_step": self.best_step, "bad_evals": self.early.bad_evals,
                 "history": self.history,
                 # batches are a function of (seed, step): the step is the data position
                 "data_position": {"step": self.step, "seed": self.settings.seed}}
        ckpt.save_checkpoint(self.work_dir / "checkpoints", self.step, self.raw_model, self.optimizer,
                             state, self.raw_model.config)

    def _resume(self) -> bool:
        """Load the latest checkpoint of the unfinished run, else of the finished stage (to train it
        further, e.g. to a larger max_iters: its files are copied to work on); False when there is
        none (a fresh start)."""
        folder = ckpt.latest_checkpoint(self.work_dir / "checkpoints")
        finished = folder is None
        if finished:
            folder = ckpt.latest_checkpoint(self.stage_dir / "checkpoints")
        if folder is None:
            self.log(f"{self.settings.stage}: no checkpoint in {self.work_dir} or {self.stage_dir}; starting fresh")
            return False
        state = ckpt.load_checkpoint(folder, self.raw_model, self.optimizer, self.raw_model.config,
                                     tokenizer_sha256=self.run_info.get("tokenizer_sha256"))
        if state.get("stage") != self.settings.stage:
            raise ckpt.CheckpointError(f"{folder}: a {state.get('stage')} checkpoint, not {self.settings.stage}")
        if finished:  # only once the checkpoint loaded: a refused one leaves nothing behind
            if self.dist.is_main:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                shutil.copytree(self.stage_dir, self.work_dir)
            barrier(self.dist)
            folder = self.work_dir / "checkpoints" / folder.name
        self.step, self.evaluated_step = state["step"], state["evaluated_step"]
        self.best_step, self.history = state["best_step"], state["history"]
        self.early = EarlyStopping(self.settings.metric, self.settings.patience, state["best"], state["bad_evals"])
        self._truncate_metrics(self.step)
        self.log(f"{self.settings.stage}: resumed from {folder} at step {self.step}")
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines a killed run wrote after its last checkpoint; the resumed run rewrites them."""
        path = self.work_dir / "metrics.jsonl"
        if not self.dist.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            # a checkpoint at step s follows the train line of step s, and its evaluation if it had one
            if record["step"] < step or (record["step"] == step and (
                    record["kind"] == "train" or self.evaluated_step == step)):
                kept.append(line)
        ckpt.write_text_atomic(path, "".join(k + "\n" for k in kept))

    def _record(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.work_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({**record, "time": time.time()}) + "\n")
