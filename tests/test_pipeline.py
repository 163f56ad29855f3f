"""The pipeline's bookkeeping: stage keys, reuse of finished stages, and the run report's numbers."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minilm.model import lora

from minilm.config import PRESETS, RunConfig
from minilm.data.sft import SPECIAL_TOKENS, build_examples
from minilm.evaluation.metrics import pass_at_k
from minilm.evaluation.statistics import paired_comparison
from minilm.model.gpt import GPT
from minilm.stages import eval as eval_stage
from minilm.stages import report as report_stage
from minilm.stages import reuse as reuse_stage
from minilm.stages.finetune import prepare_finetune_model, sft_batches
from minilm.stages.pretrain import mixed_batches
from minilm.tokenizer.tokenizer import Tokenizer
from minilm.training.trainer import Batch

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path, **changes):
    return dataclasses.replace(PRESETS["tiny"], out_dir=str(tmp_path / "run"), **changes)


def test_a_stage_key_changes_only_with_what_the_stage_reads(tmp_path):
    base = tiny(tmp_path)
    keys = {stage: reuse_stage.stage_key(base, stage) for stage in reuse_stage.STAGE_FIELDS}
    ft = tiny(tmp_path, ft_lr=1e-2)
    assert reuse_stage.stage_key(ft, "finetune") != keys["finetune"]
    assert reuse_stage.stage_key(ft, "pretrain") == keys["pretrain"]
    assert reuse_stage.stage_key(ft, "tokenizer") == keys["tokenizer"]
    wider = dataclasses.replace(base, model=dataclasses.replace(base.model, n_embd=96))
    assert reuse_stage.stage_key(wider, "pretrain") != keys["pretrain"]
    assert reuse_stage.stage_key(wider, "tokenizer") == keys["tokenizer"]
    assert reuse_stage.stage_key(tiny(tmp_path, log_interval=1), "pretrain") == keys["pretrain"]


def test_every_config_field_is_keyed_by_a_stage_or_declared_unkeyed():
    """A field no stage lists would change results without redoing the stage that reads it."""
    fields_of = lambda table: {name.split(".")[0] for names in table.values() for name in names}  # noqa: E731
    keyed = fields_of(reuse_stage.STAGE_FIELDS) | fields_of(reuse_stage.IMPORT_FIELDS)
    assert not keyed & set(reuse_stage.UNKEYED_FIELDS)
    assert keyed | set(reuse_stage.UNKEYED_FIELDS) == {f.name for f in dataclasses.fields(RunConfig)}


def test_a_stage_key_follows_the_task_suite_where_the_stage_reads_it(tmp_path, monkeypatch):
    no_mix, mix = tiny(tmp_path), tiny(tmp_path, pretrain_task_mix=0.2)
    keys = {(cfg.pretrain_task_mix, stage): reuse_stage.stage_key(cfg, stage)
            for cfg in (no_mix, mix) for stage in reuse_stage.STAGE_FIELDS}
    monkeypatch.setattr("minilm.stages.reuse.suite_fingerprint", lambda seed, n_train, steps_weight: "a changed generator")
    for (fraction, stage), key in keys.items():
        reads_suite = stage in ("finetune", "eval") or (stage == "pretrain" and fraction > 0)  # own_answers off
        assert (reuse_stage.stage_key(mix if fraction else no_mix, stage) != key) == reads_suite, stage


def test_an_eval_part_key_leaves_out_only_what_other_parts_read(tmp_path, monkeypatch):
    """Turning on the requests or HumanEval's samples for a finished run evaluates just that part."""
    def part_keys(cfg):
        return {part: reuse_stage.eval_part_key(cfg, "finetune", part) for part in reuse_stage.EVAL_PART_IGNORES}

    def changed(cfg):
        return sorted(part for part, key in part_keys(cfg).items() if key != base[part])
    cfg = tiny(tmp_path)
    base = part_keys(cfg)
    assert {name for names in reuse_stage.EVAL_PART_IGNORES.values() for name in names} <= set(
        reuse_stage.STAGE_FIELDS["eval"])
    assert changed(tiny(tmp_path, eval_requests=False)) == []  # which parts run, not what one finds
    assert changed(tiny(tmp_path, eval_humaneval_samples=10)) == ["humaneval_sampled"]
    assert changed(tiny(tmp_path, eval_teacher_forcing=False)) == ["requests", "tasks"]
    assert changed(tiny(tmp_path, eval_max_new_tokens=64)) == sorted(base)  # no part leaves it out
    stage_key = reuse_stage.stage_key(cfg, "eval")
    assert reuse_stage.stage_key(tiny(tmp_path, eval_requests=False), "eval") != stage_key
    monkeypatch.setattr("minilm.stages.reuse.requests_fingerprint", lambda: "an edited requests file")
    assert changed(cfg) == ["requests"] and reuse_stage.stage_key(cfg, "eval") != stage_key
    monkeypatch.undo()
    monkeypatch.setattr("minilm.stages.reuse.heldout_fingerprint", lambda *args: "a new held-out split")
    assert changed(cfg) == ["tasks"]  # HumanEval and the requests do not read the suite
    monkeypatch.undo()
    # another training mix: the base's parts stay (the fine-tuned model's files are what change)
    assert changed(tiny(tmp_path, task_steps_weight=2.0, task_train_size=123)) == []
    # the samples are drawn from the run's seed: an imported base's files do not change with it
    # (a run with another seed reused the first seed's sampled HumanEval of the base)
    assert changed(tiny(tmp_path, seed=cfg.seed + 1)) == ["humaneval_sampled"]


def test_a_stage_key_follows_the_files_it_builds_on(tmp_path):
    cfg = tiny(tmp_path)
    before = reuse_stage.stage_key(cfg, "finetune")
    weights = Path(cfg.out_dir) / "pretrain" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"one")
    first = reuse_stage.stage_key(cfg, "finetune")
    weights.write_bytes(b"two")
    assert len({before, first, reuse_stage.stage_key(cfg, "finetune")}) == 3


def test_mark_done_then_is_done_until_inputs_change(tmp_path):
    cfg = tiny(tmp_path)
    (Path(cfg.out_dir) / "pretrain").mkdir(parents=True)
    reuse_stage.mark_done(cfg, "pretrain", 1.0)
    assert not reuse_stage.is_done(cfg, "pretrain")  # recorded, but its weights are not there
    (Path(cfg.out_dir) / "pretrain" / "model.safetensors").write_bytes(b"w")
    reuse_stage.mark_done(cfg, "pretrain", 12.5)
    assert reuse_stage.is_done(cfg, "pretrain")
    assert reuse_stage.read_stages(cfg.out_dir)["pretrain"]["seconds"] == 12.5
    assert not reuse_stage.is_done(tiny(tmp_path, max_iters=21), "pretrain")
    (Path(cfg.out_dir) / reuse_stage.STAGES_FILE).write_text("{not json")
    assert not reuse_stage.is_done(cfg, "pretrain")  # a damaged record re-runs stages, never crashes


def test_train_py_reuses_a_finished_stage_and_force_redoes_it(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "train.py", "--config", "tiny", "--stage", "tokenizer", "--out_dir", str(out),
               "--corpus_max_bytes", "30000"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "training a 512-token BPE" in first.stdout
    tokenizer = (out / "tokenizer.json").read_bytes()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "reusing the finished stage" in again.stdout and "training" not in again.stdout
    forced = subprocess.run(command + ["--force"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "training a 512-token BPE" in forced.stdout
    assert (out / "tokenizer.json").read_bytes() == tokenizer  # same inputs, same tokenizer
    other = subprocess.run(command[:-1] + ["40000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "training a 512-token BPE" in other.stdout  # new corpus budget: retrained, not reused


@pytest.mark.parametrize("argv, message", [
    (["--config", "huge"], "unknown config 'huge'"),
    (["--stage", "deploy"], "--stage must be one of"),
    (["--max_iter", "3"], "did you mean --max_iters?"),
    (["--optimizer", "sgd"], "--optimizer must be one of adamw, muon"),
])
def test_train_py_bad_input_is_one_line_and_exit_2(argv, message):
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def fake_records(split, kind, outcomes):
    if kind == "explain":
        return [{"task_id": f"{split}/{kind}/{i}", "split": split, "kind": kind, "family": "f", "precision": x,
                 "recall": x, "f1": x, "tf_tokens": 0} for i, x in enumerate(outcomes)]
    return [{"task_id": f"{split}/{kind}/{i}", "split": split, "kind": kind, "family": "f", "n": 1, "c": int(x),
             "statuses": ["passed" if x else "failed"], "tf_tokens": 0} for i, x in enumerate(outcomes)]


def test_report_table_recomputes_from_the_per_task_records():
    before = fake_records("test_seen", "generate", [0, 0, 1]) + fake_records("test_seen", "repair", [0])
    after = (fake_records("test_seen", "generate", [1, 1, 1]) + fake_records("test_seen", "repair", [0])
             + fake_records("test_seen", "explain", [0.5, 1.0]))
    before += fake_records("test_seen", "explain", [0.0, 0.0])
    table = eval_stage.split_kind_table(before, after)
    seen = table["test_seen"]
    assert {k: seen["all"][k] for k in ("tasks", "pass@1_before", "pass@1_after")} == {
        "tasks": 4, "pass@1_before": 0.25, "pass@1_after": 0.75}
    assert seen["all"]["paired"] == paired_comparison({"a": 0, "b": 0, "c": 1, "d": 0},
                                                      {"a": 1, "b": 1, "c": 1, "d": 0})
    assert (seen["all"]["paired"]["gained"], seen["all"]["paired"]["lost"]) == (2, 0)
    assert seen["generate"]["pass@1_after"] == sum(pass_at_k(1, 1, 1) for _ in range(3)) / 3
    assert seen["repair"]["paired"]["verdict"] == "no detectable change"
    assert seen["explain"] == {"tasks": 2, "explain_f1_before": 0.0, "explain_f1_after": 0.75}  # F1: no pairs to flip
    assert table["test_phrasing"] == {} and table["test_compose"] == {}
    flipped = paired_comparison({f"r{i}": 0 for i in range(8)}, {f"r{i}": 1 for i in range(8)})
    sampled = paired_comparison({"h1": 0.2, "h2": 0.5}, {"h1": 0.1, "h2": 0.5}, sampled=True)
    markdown = report_stage.report_markdown({
        "run_dir": "r", "device": "cpu", "model_config": {"n_layer": 2}, "pretrain_val_bits_per_byte": 1.5,
        "stage_seconds": {"pretrain": 10.0, "eval": 2.0}, "results": table,
        "requests": {"tasks": 8, "pass@1_before": 0.0, "pass@1_after": 1.0, "paired": flipped},
        "humaneval": {"problems": 2, "format": "chat", "pass@1_before": 0.5, "pass@1_after": 0.5, "paired":
                      paired_comparison({"h1": 0, "h2": 1}, {"h1": 0, "h2": 1}),
                      "sampled": {"samples": 10, "temperature": 0.2, "top_p": 0.95, "pass@1_before": 0.35,
                                  "pass@1_after": 0.3, "paired": sampled}}})
    lo, hi = seen["all"]["paired"]["interval_before"]
    assert (f"| test_seen | generate + repair (pass@1) | 4 | 25.0% [{100 * lo:.1f}, {100 * hi:.1f}] | 75.0% ["
            in markdown)
    assert "| +2 / -0 | 0.500 | no detectable change |" in markdown
    assert "| test_seen | explain (explain F1) | 2 | 0.0% | 75.0% | - | - | - |" in markdown
    assert "| requests | generate, greedy (pass@1) | 8 | 0.0% [0.0, " in markdown
    assert "| +8 / -0 | 0.008 | better |" in markdown
    assert "| HumanEval | chat prompt, greedy (pass@1) | 2 | 50.0% [" in markdown
    assert ("| HumanEval | chat prompt, pass@1 of 10 samples at T 0.2, top-p 0.95 | 2 | 35.0% | 30.0% | +0 / -1 "
            "| 1.000 | no detectable change |") in markdown
    assert "total 12 s" in markdown and "1.500 bits per byte" in markdown and "model: n_layer=2" in markdown
    json.dumps(table)  # report.json must be plain JSON


def test_pretraining_mix_draws_task_batches_at_the_asked_rate_reproducibly():
    code = lambda step, micro: Batch(torch.zeros(1, 1), torch.zeros(1, 1))  # noqa: E731
    tasks = lambda step, micro: Batch(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1))  # noqa: E731
    mixed = mixed_batches(code, tasks, 0.25, seed=7)
    picks = [mixed(step, micro).loss_mask is not None for step in range(400) for micro in range(2)]
    assert 0.2 < sum(picks) / len(picks) < 0.3
    assert picks == [mixed(step, micro).loss_mask is not None for step in range(400) for micro in range(2)]
    assert not any(mixed_batches(code, tasks, 0.0, seed=7)(s, 0).loss_mask is not None for s in range(50))


def test_length_grouped_fine_tuning_batches_are_a_pure_function_of_the_step_with_less_padding():
    tok = Tokenizer.train(["def f(x):\n    return x + 1\n"], 270, special_tokens=SPECIAL_TOKENS)
    texts = ["x " * n for n in range(1, 80, 3)]
    examples = build_examples(tok, [{"kind": "generate", "text": t, "code": t} for t in texts], 256)
    plain, grouped = sft_batches(examples, 4, seed=3), sft_batches(examples, 4, seed=3, group_by_length=8)
    for step in (0, 5, 8, 13):   # the same batch whichever step came before (resume, DDP)
        assert all(torch.equal(a, b) for a, b in zip(grouped(step, 0), grouped(step, 0)))
        assert grouped(step, 0).idx.shape[0] == 4
    computed = lambda batches: sum(batches(s, 0).idx.numel() for s in range(64))  # noqa: E731, padding included
    assert computed(grouped) < 0.8 * computed(plain)


@pytest.mark.parametrize("finetune", ["lora", "lora+top_k"])
def test_adapters_start_from_the_run_seed_whatever_ran_before(tmp_path, finetune):
    """A fine-tuning stage run alone (pretraining reused) must start where it starts after
    pretraining in the same process: the adapters' initial weights come from cfg.seed, not from
    the global generator's state (which torch seeds at random in each new process)."""
    def initial_adapters(global_seed, run_seed=1337):
        cfg = tiny(tmp_path, finetune=finetune, seed=run_seed)
        torch.manual_seed(0)
        model = GPT(cfg.model)
        torch.manual_seed(global_seed)  # stands for whatever ran before in this process
        prepare_finetune_model(model, cfg, log=lambda *_: None)
        return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("lora_A")}

    first, second, other_seed = initial_adapters(1), initial_adapters(2), initial_adapters(1, run_seed=7)
    assert first and first.keys() == second.keys() == other_seed.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not any(torch.equal(first[n], other_seed[n]) for n in first)


def test_lora_dora_reaches_the_finetuning_stage_and_its_adapter_file(tmp_path):
    """--lora_dora true fine-tunes DoRA adapters: the saved adapter_config.json says use_dora (as
    PEFT's does), and the run loads back as base + DoRA adapter."""
    from minilm import checkpoint as ckpt
    from minilm.data.tokens import tokenizer_fingerprint
    from minilm.stages.tokenizer import ensure_tokenizer
    from minilm.stages.finetune import run_finetune
    cfg = tiny(tmp_path, lora_dora=True, device="cpu", data_dir=str(tmp_path / "data"), corpus=str(ROOT / "minilm"),
               corpus_max_bytes=30_000, ft_max_iters=1, ft_warmup_iters=1, ft_eval_tasks=4, task_train_size=50,
               peak_flops=1e12)
    assert reuse_stage.stage_key(cfg, "finetune") != reuse_stage.stage_key(tiny(tmp_path), "finetune")
    quiet = lambda *_: None  # noqa: E731
    tok = ensure_tokenizer(cfg, log=quiet)
    torch.manual_seed(0)  # a random base stands for the pretrained one
    ckpt.save_weights(Path(cfg.out_dir) / "pretrain" / ckpt.MODEL_FILE,
                      ckpt.trainable_state(GPT(cfg.model), trainable_only=False), cfg.model,
                      {"tokenizer_sha256": tokenizer_fingerprint(tok)})
    run_finetune(cfg, log=quiet)
    adapter = json.loads((Path(cfg.out_dir) / "finetune" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    model, _ = ckpt.load_run(cfg.out_dir, stage="finetune", merge_lora=False)
    assert all(layer.dora for layer in lora.lora_layers(model).values())
