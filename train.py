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

A finished stage is reused, not redone, while its inputs are unchanged (minilm/stages/reuse.py keeps
their keys and wall times in RUN_DIR/stages.json).

With --init (a pretrained base: smollm2, a .gguf file or a Hugging Face Llama directory; the
smollm2 preset sets it) the tokenizer stage imports the base's tokenizer and the pretrain stage
its weights instead of training them (minilm/pretrained.py); fine-tuning and evaluation are the same.

The stages are minilm/stages/ (pipeline.py runs them in order). The run-directory layout is in
minilm/checkpoint.py. Exit codes: 0 done, 1 training diverged (NaN/inf), 2 bad configuration or
checkpoint, 130 interrupted by Ctrl-C (a checkpoint was written; --resume continues).
"""
from __future__ import annotations

import contextlib
import sys

from minilm.config import PRESETS, ConfigError, config_keys, load_config

OPTIONS = {"stage": "all", "resume": "no", "force": False}
RESUME_VALUES = {"no": False, "false": False, "0": False, "true": True, "yes": True, "1": True, "auto": True}


STAGE_NAMES = ("tokenizer", "pretrain", "own_answers", "finetune", "eval")  # minilm.stages.pipeline.PIPELINE, in order


def usage() -> str:
    return (f"{__doc__.strip()}\n\npresets (--config): {', '.join(PRESETS)}\n"
            f"config keys (--key value): {', '.join(config_keys())}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    try:  # options first: a typo is reported before torch is even imported
        cfg, opts = load_config(argv, OPTIONS)
        if opts["stage"] not in (*STAGE_NAMES, "all"):
            raise ConfigError(f"--stage must be one of {', '.join(STAGE_NAMES)} or all, got {opts['stage']!r}")
        if opts["resume"].lower() not in RESUME_VALUES:
            raise ConfigError(f"--resume takes no value (or auto/true/false), got {opts['resume']!r}")
        opts["resume"] = RESUME_VALUES[opts["resume"].lower()]
        # imported only now, so that a typo is reported before torch is even loaded
        from minilm.checkpoint import CheckpointError  # a ConfigError: reported the same way
        from minilm.rundir import run_lock
        from minilm.runtime import resolve_device
        from minilm.stages.pipeline import PIPELINE, run_stage
        from minilm.training.distributed import cleanup, init_distributed
        from minilm.training.trainer import TrainingDiverged, TrainingInterrupted
        dist = init_distributed(resolve_device(cfg.device).type)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, flush=True)) if dist.is_main else (lambda msg: None)
    try:  # one process writes a run at a time (the others of a torchrun group follow rank 0)
        with run_lock(cfg.out_dir) if dist.is_main else contextlib.nullcontext():
            for name in PIPELINE if opts["stage"] == "all" else (opts["stage"],):
                run_stage(name, cfg, opts, dist, log)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or foreign --out_dir: what the system said, on one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; free some space or choose another --out_dir "
              "(finished stages are kept as they were)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (which checkpoints and raises TrainingInterrupted)
        print("interrupted; finished stages and evaluation parts are kept: run the same command to go on",
              file=sys.stderr)
        return 130
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
