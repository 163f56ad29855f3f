"""The whole mission as stages: tokenizer -> pretrain -> own_answers -> finetune -> eval, each reused
when unchanged (own_answers does nothing unless own_answers_samples > 0).

    python train.py --config small                 # every stage, in order
    python train.py --config small --stage eval    # one stage

Each stage is one function taking the RunConfig, the options, the process group and a log, and
delegating to its module in this folder; adding a stage is one function and one entry in STAGES.
run_stage skips a stage that finished with the same inputs (minilm/stages/reuse.py) and records
the ones it runs. A stage replaces its outputs only once it has finished (minilm/rundir.py), so
its record in stages.json stays true until then. The run-directory layout is in minilm/checkpoint.py.
"""
from __future__ import annotations

import time

from minilm.config import RunConfig
from minilm.stages import reuse
from minilm.stages.common import save_config
from minilm.stages.eval import run_eval
from minilm.stages.finetune import run_finetune
from minilm.stages.own_answers import run_own_answers
from minilm.stages.pretrain import import_base, run_pretrain
from minilm.stages.report import write_run_report
from minilm.stages.tokenizer import ensure_tokenizer
from minilm.training.distributed import barrier


def stage_tokenizer(cfg: RunConfig, opts: dict, dist, log) -> None:
    tok = ensure_tokenizer(cfg, dist, log, replace=True)  # it runs because its settings changed (or --force)
    log(f"tokenizer: {tok.vocab_size} tokens in {cfg.out_dir}/tokenizer.json")


def stage_pretrain(cfg: RunConfig, opts: dict, dist, log) -> None:
    if cfg.init:  # a pretrained base: its weights are imported, not trained
        import_base(cfg, dist, log)
    else:
        run_pretrain(cfg, dist, resume=opts["resume"], log=log)


def stage_own_answers(cfg: RunConfig, opts: dict, dist, log) -> None:
    if dist.is_main:  # sampling runs on one process; the others wait at the barrier
        run_own_answers(cfg, resume=opts["resume"], log=log)


def stage_finetune(cfg: RunConfig, opts: dict, dist, log) -> None:
    run_finetune(cfg, dist, resume=opts["resume"], log=log)


def stage_eval(cfg: RunConfig, opts: dict, dist, log) -> None:
    if not dist.is_main:
        return  # evaluation runs on one process
    start = time.perf_counter()
    report = run_eval(cfg, log, reuse=not opts["force"])  # --force redoes every part
    write_run_report(cfg, report, time.perf_counter() - start, log)


STAGES = {"tokenizer": stage_tokenizer, "pretrain": stage_pretrain, "own_answers": stage_own_answers,
          "finetune": stage_finetune, "eval": stage_eval}
PIPELINE = ("tokenizer", "pretrain", "own_answers", "finetune", "eval")


def run_stage(name: str, cfg: RunConfig, opts: dict, dist, log) -> None:
    """Run one stage unless it already finished with the same inputs; record its key and time."""
    if not opts["force"] and reuse.is_done(cfg, name):
        log(f"{name}: reusing the finished stage in {cfg.out_dir} (inputs unchanged; --force redoes it)")
        return
    start = time.perf_counter()
    STAGES[name](cfg, opts, dist, log)  # replaces the stage's outputs only once it has finished
    barrier(dist)
    if dist.is_main:
        reuse.mark_done(cfg, name, time.perf_counter() - start)
        save_config(cfg, dist)  # the settings the run's outputs were last made with
