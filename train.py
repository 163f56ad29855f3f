"""minilm's entry point: train a tokenizer, pretrain on code, fine-tune on tasks.

    python train.py --config small                              # the whole pipeline
    python train.py --config smollm2                            # LoRA on the pretrained SmolLM2-135M
    python train.py --config tiny --stage pretrain --max_iters 50 --out_dir runs/try
    python train.py --config small --stage finetune --finetune top_k --top_k_layers 2
    python train.py --config small --resume                      # continue a killed or stopped run
    python train.py --config small --stage finetune --force      # redo a finished stage
    torchrun --nproc_per_node 4 train.py --config medium         # data-parallel on 4 GPUs

Options besides the config overrides (`--key value` for any RunConfig / ModelConfig field):
    --stage NAME   one of STAGES below, or "all" (the PIPELINE in order)
    --resume       continue each stage from its checkpoint in --out_dir (a stage without one starts
                   fresh); without it an unfinished stage starts over. `--resume auto` means the same.
    --force        redo the stages asked for even when they finished with the same inputs

A finished stage is reused, not redone, while its inputs are unchanged (minilm/pipeline.py keeps
their keys and wall times in RUN_DIR/stages.json).

With --init (a pretrained base: smollm2, a .gguf file or a Hugging Face Llama directory; the
smollm2 preset sets it) the tokenizer stage imports the base's tokenizer and the pretrain stage
its weights instead of training them (minilm/pretrained.py); fine-tuning and evaluation are the same.

Each stage is one function taking the RunConfig (and the options) that delegates to a minilm
module; adding a stage is one function and one entry in STAGES. The run-directory layout is in
minilm/checkpoint.py. Exit codes: 0 done, 1 training diverged (NaN/inf), 2 bad configuration or
checkpoint, 130 interrupted by Ctrl-C (a checkpoint was written; --resume continues).
"""
from __future__ import annotations

import sys
import time

from minilm.config import ConfigError, RunConfig, load_config

OPTIONS = {"stage": "all", "resume": "no", "force": False}
RESUME_VALUES = {"no": False, "false": False, "0": False, "true": True, "yes": True, "1": True, "auto": True}


def stage_tokenizer(cfg: RunConfig, opts: dict, dist, log) -> None:
    from minilm.pipeline import forget_tokenizer
    from minilm.stages import ensure_tokenizer
    if dist.is_main:
        forget_tokenizer(cfg)  # the stage runs because its settings changed (or --force)
    tok = ensure_tokenizer(cfg, dist, log)
    log(f"tokenizer: {tok.vocab_size} tokens in {cfg.out_dir}/tokenizer.json")


def stage_pretrain(cfg: RunConfig, opts: dict, dist, log) -> None:
    from minilm.stages import import_base, run_pretrain
    if cfg.init:  # a pretrained base: its weights are imported, not trained
        import_base(cfg, dist, log)
    else:
        run_pretrain(cfg, dist, resume=opts["resume"], log=log)


def stage_finetune(cfg: RunConfig, opts: dict, dist, log) -> None:
    from minilm.stages import run_finetune
    run_finetune(cfg, dist, resume=opts["resume"], log=log)


def stage_eval(cfg: RunConfig, opts: dict, dist, log) -> None:
    from minilm.pipeline import run_eval, write_run_report
    if not dist.is_main:
        return  # evaluation runs on one process
    start = time.perf_counter()
    report = run_eval(cfg, log, reuse=not opts["force"])  # --force redoes every part
    write_run_report(cfg, report, time.perf_counter() - start, log)


STAGES = {"tokenizer": stage_tokenizer, "pretrain": stage_pretrain, "finetune": stage_finetune,
          "eval": stage_eval}
PIPELINE = ("tokenizer", "pretrain", "finetune", "eval")


def run_stage(name: str, cfg: RunConfig, opts: dict, dist, log) -> None:
    """Run one stage unless it already finished with the same inputs; record its key and time."""
    from minilm.distributed import barrier
    from minilm.pipeline import forget_done, is_done, mark_done
    if not opts["force"] and is_done(cfg, name):
        log(f"{name}: reusing the finished stage in {cfg.out_dir} (inputs unchanged; --force redoes it)")
        return
    if dist.is_main:
        forget_done(cfg, name)
    start = time.perf_counter()
    STAGES[name](cfg, opts, dist, log)
    barrier(dist)
    if dist.is_main:
        mark_done(cfg, name, time.perf_counter() - start)


def usage() -> str:
    from minilm.config import PRESETS, config_keys
    return (f"{__doc__.strip()}\n\npresets (--config): {', '.join(PRESETS)}\n"
            f"config keys (--key value): {', '.join(config_keys())}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    try:  # options first: a typo is reported before torch is even imported
        cfg, opts = load_config(argv, OPTIONS)
        if opts["stage"] not in (*STAGES, "all"):
            raise ConfigError(f"--stage must be one of {', '.join(STAGES)} or all, got {opts['stage']!r}")
        if opts["resume"].lower() not in RESUME_VALUES:
            raise ConfigError(f"--resume takes no value (or auto/true/false), got {opts['resume']!r}")
        opts["resume"] = RESUME_VALUES[opts["resume"].lower()]
        from minilm.checkpoint import CheckpointError  # a ConfigError: reported the same way
        from minilm.distributed import cleanup, init_distributed
        from minilm.runtime import resolve_device
        from minilm.trainer import TrainingDiverged, TrainingInterrupted
        dist = init_distributed(resolve_device(cfg.device).type)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, flush=True)) if dist.is_main else (lambda msg: None)
    try:
        for name in PIPELINE if opts["stage"] == "all" else (opts["stage"],):
            run_stage(name, cfg, opts, dist, log)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    finally:
        cleanup(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
