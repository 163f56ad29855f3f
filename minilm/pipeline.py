"""The whole mission as stages: tokenizer -> pretrain -> finetune -> eval, each reused when unchanged.

    python train.py --config small            # every stage, in order
    python train.py --config small --stage eval

Reuse. Each stage has a key: a hash of the config fields it reads plus the files it builds on
(the tokenizer for pretraining, the pretrained weights for fine-tuning, ...). When a stage
finishes, RUN_DIR/stages.json records its key and wall time. Next time the stage is skipped if its
key is unchanged, so changing a fine-tuning option redoes fine-tuning and evaluation but not
pretraining. `--force` redoes a stage whatever its key. Within the eval stage each part (a model's
tasks, its HumanEval) is saved with its own key as it finishes (eval_part_key): an interrupted
evaluation resumes, and a new fine-tuning of the same base does not re-evaluate the base.

With a pretrained base (`--init`, minilm/pretrained.py) the tokenizer stage imports the base's
tokenizer and the pretrain stage its weights; their keys are then the base's files and the model
config, and the training fields they would otherwise read change nothing.

The eval stage scores the model before fine-tuning (the pretrained weights) and after it on the
held-out splits, by running the generated code (minilm.evaluate), and, with eval_humaneval, on
HumanEval (minilm.humaneval, greedy pass@1); it writes RUN_DIR/report.json and report.md: pass@1
per split and task kind before/after, HumanEval before/after, the pretraining validation bits per
byte (or the base the run starts from), the wall time of each stage and the device.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from minilm import checkpoint as ckpt
from minilm.config import RunConfig, to_dict

EVAL_SPLITS = ("test_seen", "test_phrasing", "test_compose")
STAGES_FILE, REPORT_NAME = "stages.json", "report"

# The config fields each stage reads (besides the files of the stages before it).
_DATA_FIELDS = ("corpus", "corpus_max_bytes")
STAGE_FIELDS = {
    "tokenizer": (*_DATA_FIELDS, "tokenizer_backend", "tokenizer_pattern", "model.vocab_size"),
    "pretrain": (*_DATA_FIELDS, "model", "seed", "task_seed", "pretrain_task_mix", "ft_batch_size",
                 "ft_group_by_length", "dtype", "batch_size", "grad_accum", "max_iters", "lr", "min_lr",
                 "warmup_iters", "weight_decay", "beta1", "beta2", "grad_clip", "optimizer", "eval_interval",
                 "eval_iters", "patience"),
    "finetune": ("task_seed", "seed", "dtype", "eval_max_new_tokens", "finetune", "ft_max_iters", "ft_batch_size",
                 "ft_lr", "ft_warmup_iters", "ft_eval_interval", "ft_grad_accum", "ft_group_by_length",
                 "ft_metric", "ft_pass_tasks", "ft_eval_tasks", "ft_neftune_alpha", "lora_r", "lora_alpha",
                 "lora_dropout", "lora_targets", "lora_dora", "loraplus_ratio", "top_k_layers", "weight_decay",
                 "beta1", "beta2", "grad_clip", "patience"),
    "eval": ("task_seed", "eval_max_new_tokens", "eval_tasks_per_split", "eval_batch_size",
             "eval_teacher_forcing", "eval_humaneval",
             "eval_humaneval_problems", "eval_humaneval_max_new_tokens"),
}
# With a pretrained base (init set), the two stages that import it read only this much of the
# config, plus the base's files (pretrained.fingerprint). Later stages see the base through the
# files it left (tokenizer.json, pretrain/model.safetensors).
IMPORT_FIELDS = {"tokenizer": ("init",), "pretrain": ("init", "model")}
# Fields keyed otherwise: task_train_size through the task suite's fingerprint (stage_key), and
# those no stage's result depends on (where files go, how often to log or checkpoint, the device).
# Every RunConfig field is in STAGE_FIELDS, IMPORT_FIELDS or here (tests/test_pipeline.py checks
# it), so a new field has to be placed.
UNKEYED_FIELDS = ("task_train_size", "out_dir", "data_dir", "device", "compile", "log_interval", "ckpt_interval",
                  "peak_flops")
# The files a stage's result depends on: the outputs of the stages before it.
STAGE_INPUTS = {
    "tokenizer": (),
    "pretrain": (ckpt.TOKENIZER_FILE,),
    "finetune": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE),
    "eval": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE, "finetune/adapter_model.safetensors",
             "finetune/" + ckpt.MODEL_FILE),
}


# ------------------------------------------------------------------------------ reuse
def _field(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def stage_fields(cfg: RunConfig, stage: str) -> tuple[str, ...]:
    """The config fields a stage reads: STAGE_FIELDS, or IMPORT_FIELDS when it imports a base."""
    return IMPORT_FIELDS[stage] if cfg.init and stage in IMPORT_FIELDS else STAGE_FIELDS[stage]


def stage_key(cfg: RunConfig, stage: str) -> str:
    """Hash of what the stage reads: its config fields and the files of the stages before it."""
    config = to_dict(cfg)
    run_dir = Path(cfg.out_dir)
    inputs = {
        "config": {name: _field(config, name) for name in stage_fields(cfg, stage)},
        "files": {name: ckpt.file_sha256(run_dir / name) for name in STAGE_INPUTS[stage]
                  if (run_dir / name).is_file()},
    }
    if cfg.init and stage in IMPORT_FIELDS:  # the base's own files (a missing one: the stage says so)
        from minilm.config import ConfigError
        from minilm.pretrained import fingerprint, resolve_init
        try:
            inputs["base"] = fingerprint(resolve_init(cfg.init))
        except ConfigError:
            inputs["base"] = None
    # A stage that reads the task suite also keys on its content, so a change to the generator's
    # code (a new family, phrasing or weight) redoes it; pretraining reads it only through the mix.
    if stage in ("finetune", "eval") or (stage == "pretrain" and cfg.pretrain_task_mix > 0 and not cfg.init):
        from minilm.tasks import suite_fingerprint
        inputs["suite"] = suite_fingerprint(cfg.task_seed, cfg.task_train_size)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


# The eval stage saves each part (a model's tasks, its HumanEval) as it finishes, keyed by what that
# part reads: an interrupted evaluation resumes after its last finished part, and a new fine-tuning
# of the same base reuses the base's "before" results (half an hour for SmolLM2 on 2 cores).
EVAL_PART_INPUTS = {"pretrain": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE),
                    "finetune": STAGE_INPUTS["eval"]}


def eval_part_key(cfg: RunConfig, model_stage: str, part: str) -> str:
    """Hash of what one part of the evaluation reads: the eval fields, the model's files, the suite."""
    from minilm.tasks import suite_fingerprint
    config, run_dir = to_dict(cfg), Path(cfg.out_dir)
    inputs = {"part": part, "config": {name: _field(config, name) for name in STAGE_FIELDS["eval"]},
              "files": {name: ckpt.file_sha256(run_dir / name) for name in EVAL_PART_INPUTS[model_stage]
                        if (run_dir / name).is_file()},
              "suite": suite_fingerprint(cfg.task_seed, cfg.task_train_size)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def saved_part(path: Path, key: str) -> Optional[dict]:
    """The report saved at path when it was made from the same inputs (its "inputs_key"), else None."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("inputs_key") == key else None


def read_stages(run_dir) -> dict:
    path = Path(run_dir) / STAGES_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}  # a damaged record only costs re-running stages


# What a finished stage leaves behind (any one of the names): deleting it makes the stage run again.
STAGE_OUTPUTS = {
    "tokenizer": (ckpt.TOKENIZER_FILE,),
    "pretrain": ("pretrain/" + ckpt.MODEL_FILE,),
    "finetune": ("finetune/adapter_model.safetensors", "finetune/" + ckpt.MODEL_FILE),
    "eval": (f"{REPORT_NAME}.json",),
}


def is_done(cfg: RunConfig, stage: str) -> bool:
    run_dir = Path(cfg.out_dir)
    if not any((run_dir / name).is_file() for name in STAGE_OUTPUTS[stage]):
        return False
    return read_stages(run_dir).get(stage, {}).get("key") == stage_key(cfg, stage)


def forget_done(cfg: RunConfig, stage: str) -> None:
    """Drop a stage's record before it runs, so an interrupted re-run is never taken as finished."""
    stages = read_stages(cfg.out_dir)
    if stages.pop(stage, None) is not None:
        ckpt.write_json_atomic(Path(cfg.out_dir) / STAGES_FILE, stages)


def mark_done(cfg: RunConfig, stage: str, seconds: float) -> None:
    stages = read_stages(cfg.out_dir)
    stages[stage] = {"key": stage_key(cfg, stage), "seconds": round(seconds, 2),
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    ckpt.write_json_atomic(Path(cfg.out_dir) / STAGES_FILE, stages)


def forget_tokenizer(cfg: RunConfig) -> None:
    """A tokenizer trained with other settings must not be picked up by ensure_tokenizer."""
    (Path(cfg.out_dir) / ckpt.TOKENIZER_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ evaluation
def pretrain_bits_per_byte(cfg: RunConfig, model, tok, log=print) -> float:
    """Validation bits per byte of a model on the held-out corpus files: total NLL / ln 2 / bytes."""
    from minilm.stages import pretrain_data, runtime_for
    from minilm.data import iter_eval_batches
    from minilm.loss import bits_per_byte
    from minilm.trainer import estimate_loss
    device, dtype = runtime_for(cfg)
    data = pretrain_data(cfg, tok, log=lambda *_: None)
    metrics = estimate_loss(model, iter_eval_batches(data.val, cfg.batch_size, cfg.model.block_size),
                            "token", device, dtype)
    n_targets = len(data.val) - 1  # every validation token after the first is predicted once
    return bits_per_byte(metrics["val_token_loss"] * n_targets, data.val_bytes)


def eval_tasks(cfg: RunConfig) -> list[dict]:
    """The first eval_tasks_per_split tasks of each held-out split (all kinds)."""
    from minilm.tasks import generate_suite
    n = cfg.eval_tasks_per_split
    suite = generate_suite(seed=cfg.task_seed, n_train=0, n_valid=0, n_test=max(n, 1))  # test splits only
    return [task for split in EVAL_SPLITS for task in suite[split][:n]]


def split_kind_table(summary_before: dict, summary_after: dict, tasks: list[dict]) -> dict:
    """{split: {kind: {"tasks", "pass@1"/"explain_f1" before and after}}} from two summaries' records."""
    table = {}
    for split in EVAL_SPLITS:
        table[split] = {}
        for kind in ("all", "generate", "repair", "explain"):
            before = summary_before.get((split, kind), {})
            after = summary_after.get((split, kind))
            if after is None:
                continue
            metric = "explain_f1" if kind == "explain" else "pass@1"
            counted = after["explain_tasks"] if kind == "explain" else after["code_tasks"]
            table[split][kind] = {"tasks": counted, f"{metric}_before": before.get(metric),
                                  f"{metric}_after": after.get(metric)}
    return table


def _by_split_and_kind(records: list[dict]) -> dict:
    from minilm.metrics import summarize_group
    groups = {}
    for split in EVAL_SPLITS:
        in_split = [r for r in records if r["split"] == split]
        if in_split:
            groups[(split, "all")] = summarize_group(in_split)
        for kind in ("generate", "repair", "explain"):
            chosen = [r for r in in_split if r["kind"] == kind]
            if chosen:
                groups[(split, kind)] = summarize_group(chosen)
    return groups


def report_markdown(report: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    if report.get("pretrained"):
        start = f"- pretrained: {report['pretrained']}"
    else:
        start = (f"- pretraining validation: {report['pretrain_val_bits_per_byte']:.3f} bits per byte "
                 "(held-out stdlib files)")
    lines = [f"# minilm run report: {report['run_dir']}", "",
             f"- device: {report['device']}, model: " + ", ".join(f"{k}={v}" for k, v in report["model_config"].items()),
             start,
             "- wall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in report["stage_seconds"].items())
             + f" (total {sum(report['stage_seconds'].values()):.0f} s)", "",
             "| split | kind | tasks | before fine-tuning | after fine-tuning |", "|---|---|---|---|---|"]
    for split, kinds in report["results"].items():
        for kind, row in kinds.items():
            metric = "explain_f1" if kind == "explain" else "pass@1"
            name = "explain F1" if kind == "explain" else "pass@1"
            label = "generate + repair" if kind == "all" else kind
            lines.append(f"| {split} | {label} ({name}) | {row['tasks']} | {pct(row[metric + '_before'])} | "
                         f"{pct(row[metric + '_after'])} |")
    if report.get("humaneval"):
        row = report["humaneval"]
        lines.append(f"| HumanEval | {row['format']} prompt, greedy (pass@1) | {row['problems']} | "
                     f"{pct(row['pass@1_before'])} | {pct(row['pass@1_after'])} |")
    return "\n".join(lines) + "\n"


def run_eval(cfg: RunConfig, log=print, reuse: bool = True) -> dict:
    """Evaluate before and after fine-tuning; write eval/ reports, report.json and report.md.

    A part saved by an earlier evaluation of the same model with the same settings is reused
    unless reuse is False (see eval_part_key)."""
    from minilm.evaluate import build_report, evaluate_model, progress_logger
    from minilm.metrics import write_comparison, write_report
    from minilm.stages import runtime_for
    device, _ = runtime_for(cfg)
    run_dir = Path(cfg.out_dir)
    tasks = eval_tasks(cfg)
    log(f"eval: {len(tasks)} held-out tasks ({cfg.eval_tasks_per_split} per split of "
        f"{', '.join(EVAL_SPLITS)}), greedy decoding, generated code run in a sandbox")
    pretrained = pretrained_description(run_dir / "pretrain" / ckpt.MODEL_FILE)
    reports, groups, humaneval = {}, {}, {}
    for stage in ("pretrain", "finetune"):
        loaded = []  # the model, once a part needs it

        def model_and_tokenizer():
            if not loaded:
                loaded.extend(ckpt.load_run(run_dir, stage=stage, device=device))
            return loaded

        if stage == "pretrain" and pretrained:
            log(f"eval: pretrained: {pretrained}")
        elif stage == "pretrain":
            bpb = pretrain_bits_per_byte(cfg, *model_and_tokenizer(), log)
            log(f"eval: pretrained model, validation {bpb:.3f} bits per byte")
        key = eval_part_key(cfg, stage, "tasks")
        reports[stage] = saved_part(run_dir / "eval" / f"{stage}.json", key) if reuse else None
        if reports[stage] is not None:
            log(f"eval: {stage}: reusing eval/{stage}.json (same model and settings; --force redoes it)")
        else:
            records = evaluate_model(*model_and_tokenizer(), tasks, cfg.eval_max_new_tokens,
                                     batch_size=cfg.eval_batch_size, with_teacher_forcing=cfg.eval_teacher_forcing,
                                     progress=progress_logger(f"eval: {stage}", log))
            reports[stage] = build_report(records, label=stage, max_new_tokens=cfg.eval_max_new_tokens)
            write_report({**reports[stage], "inputs_key": key}, run_dir / "eval", stage)
        groups[stage] = _by_split_and_kind(reports[stage]["records"])
        log(f"eval: {stage} pass@1 {reports[stage]['summary']['overall'].get('pass@1', 0.0):.3f}")
        if cfg.eval_humaneval:
            key = eval_part_key(cfg, stage, "humaneval")
            humaneval[stage] = saved_part(run_dir / "eval" / f"humaneval_{stage}.json", key) if reuse else None
            if humaneval[stage] is not None:
                log(f"eval: {stage}: reusing eval/humaneval_{stage}.json (--force redoes it)")
            else:
                humaneval[stage] = run_humaneval(cfg, *model_and_tokenizer(), stage, log, inputs_key=key)
    write_comparison(reports["pretrain"], reports["finetune"], run_dir / "eval",
                     labels=("before fine-tuning", "after fine-tuning"))
    report = {
        "run_dir": str(run_dir), "device": str(device), "model_config": to_dict(cfg)["model"],
        **({"pretrained": pretrained} if pretrained else {"pretrain_val_bits_per_byte": bpb}),
        "isolation": reports["finetune"]["meta"]["isolation"],
        "results": split_kind_table(groups["pretrain"], groups["finetune"], tasks),
        "examples": _examples(tasks, reports["finetune"]["records"]),
    }
    if humaneval:
        meta = humaneval["finetune"]["meta"]
        report["humaneval"] = {"problems": meta["tasks"], "format": meta["format"],
                               "max_new_tokens": meta["max_new_tokens"],
                               **{f"pass@1_{when}": humaneval[stage]["summary"]["overall"].get("pass@1")
                                  for when, stage in (("before", "pretrain"), ("after", "finetune"))}}
    return report


def pretrained_description(weights) -> str:
    """What a run's pretrained weights are when they were imported, not trained (minilm.stages.
    import_base records it in the file's metadata, e.g. "SmolLM2-135M-Instruct, Q4_1 GGUF,
    dequantised to fp32"); "" for weights pretrained here."""
    from safetensors import safe_open
    with safe_open(str(weights), framework="pt") as f:
        return (f.metadata() or {}).get("pretrained", "")


def run_humaneval(cfg: RunConfig, model, tok, stage: str, log=print, inputs_key: str = "") -> dict:
    """Greedy pass@1 on HumanEval (the first eval_humaneval_problems, or all 164), in the chat format
    for a ChatML tokenizer and as a plain code prefix otherwise; eval/humaneval_{stage}.json and .md."""
    from minilm import humaneval as he
    from minilm.evaluate import build_report, progress_logger
    from minilm.metrics import write_report
    problems = he.load_problems()
    problems = problems[:cfg.eval_humaneval_problems] if cfg.eval_humaneval_problems else problems
    prompt_format, render_chat = he.prompt_format(tok)
    records = he.evaluate_humaneval(model, tok, prompt_format, render_chat=render_chat, problems=problems,
                                    max_new_tokens=cfg.eval_humaneval_max_new_tokens,
                                    batch_size=cfg.eval_batch_size,
                                    progress=progress_logger(f"eval: {stage} HumanEval", log))
    report = build_report(records, label=stage, benchmark="humaneval", format=prompt_format,
                          max_new_tokens=cfg.eval_humaneval_max_new_tokens)
    write_report({**report, "inputs_key": inputs_key} if inputs_key else report, Path(cfg.out_dir) / "eval",
                 "humaneval_" + stage)
    log(f"eval: {stage} HumanEval pass@1 {report['summary']['overall'].get('pass@1', 0.0):.3f} "
        f"({len(problems)} problems, {prompt_format} prompt)")
    return report


def write_run_report(cfg: RunConfig, report: dict, eval_seconds: float, log=print) -> None:
    """report.json / report.md with every stage's wall time, then print the table and examples."""
    run_dir = Path(cfg.out_dir)
    seconds = {name: record["seconds"] for name, record in read_stages(run_dir).items()}
    report["stage_seconds"] = {name: seconds[name] for name in ("tokenizer", "pretrain", "finetune")
                               if name in seconds} | {"eval": round(eval_seconds, 2)}
    ckpt.write_json_atomic(run_dir / f"{REPORT_NAME}.json", report)
    ckpt.write_text_atomic(run_dir / f"{REPORT_NAME}.md", report_markdown(report))
    log("")
    log(report_markdown(report))
    for example in report["examples"]:
        log(f"--- {example['split']} task ({example['status']}): {example['text']}")
        log(example["code"])
    log("")
    curves = _plot_curves(run_dir)
    log(f"written: {run_dir}/report.md, report.json, eval/ (per-task records), tokenizer.json, "
        f"pretrain/model.safetensors, finetune/ (adapter or weights), */metrics.jsonl, {curves}")


def _plot_curves(run_dir: Path) -> str:
    """RUN_DIR/curves.png when matplotlib (the optional extra) is installed; else how to get it."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        return 'no curves.png (pip install "minilm[plot]", then python -m minilm.plot RUN_DIR)'
    from minilm.plot import plot_run
    return f"loss curves in {plot_run(run_dir)}"


def _examples(tasks: list[dict], records: list[dict], n: int = 3) -> list[dict]:
    """One generated program per held-out split (the first code task of each), with its verdict."""
    examples = []
    for split in EVAL_SPLITS:
        for task, record in zip(tasks, records):
            if task["split"] == split and record["kind"] != "explain" and record["completions"]:
                examples.append({"split": split, "text": task["text"], "code": record["completions"][0],
                                 "status": record["statuses"][0]})
                break
    return examples[:n]
