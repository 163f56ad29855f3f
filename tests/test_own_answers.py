"""The own_answers stage: a task's target becomes the model's own answer only when the sandbox saw
it pass; otherwise the reference stays. The stage resumes an interruption with what an
uninterrupted run would have drawn, and does nothing while it is off.

Generation is replaced by a scripted one (a tiny random model passes no test), so that which
samples pass is known; the sandbox that judges them is the real one."""
import dataclasses
import json

import pytest
import torch

from minilm import checkpoint as ckpt
from minilm.checkpoint import save_weights, trainable_state
from minilm.config import PRESETS, ConfigError, ModelConfig
from minilm.data import sft
from minilm.data.tasks import generate_suite
from minilm.data.tasks.steps import STEP_FAMILY_NAMES
from minilm.evaluation import evaluate
from minilm.model.gpt import GPT
from minilm.stages import own_answers as stage
from minilm.stages import reuse
from minilm.stages.common import task_suite
from minilm.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run with a tokenizer and a (random) pretrained model, as the stage reads them."""
    run = tmp_path_factory.mktemp("run")
    suite = generate_suite(seed=0, n_train=40, n_valid=0, n_test=1)
    tok = Tokenizer.train([t["text"] + t["code"] for t in suite["train"]], 320, special_tokens=sft.SPECIAL_TOKENS)
    tok.save(str(run / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=1, n_head=2, n_embd=32))
    (run / "pretrain").mkdir()
    save_weights(run / "pretrain" / "model.safetensors", trainable_state(model, trainable_only=False), model.config)
    return run


def config(run_dir, **changes):
    return dataclasses.replace(PRESETS["tiny"], **{"out_dir": str(run_dir), "own_answers_samples": 2,
                                                   "own_answers_tasks": 10, **changes})


def own_code(task: dict) -> str:
    """A passing answer that is not the reference: the same function, written another way."""
    return "# my own answer\n" + task["code"]


class ScriptedGeneration:
    """generate_completions' stand-in: for every third task both samples fail; else the second
    passes. It records the seeds and tasks it was asked for, and can fail on its n-th call."""
    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call = [], fail_on_call

    def __call__(self, model, tok, tasks, max_new_tokens, n_samples, temperature, top_k, top_p, seed, *args):
        self.calls.append((seed, [t["task_id"] for t in tasks]))
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        wrong = "```python\ndef nothing():\n    pass\n```"
        return [[wrong, wrong if i % 3 == 0 else f"```python\n{own_code(t)}\n```"][:n_samples]
                for i, t in enumerate(tasks)]


def answers_file(run_dir):
    return run_dir / stage.STAGE / stage.ANSWERS_FILE


def test_a_passing_answer_of_its_own_replaces_the_reference_and_only_that(run_dir, monkeypatch):
    monkeypatch.setattr(stage, "CHUNK", 4)
    monkeypatch.setattr(evaluate, "generate_completions", ScriptedGeneration())
    cfg = config(run_dir)
    summary = stage.run_own_answers(cfg, resume=False, log=lambda *a: None)
    tasks = stage.sampled_tasks(task_suite(cfg)["train"], cfg.own_answers_tasks)
    answers = stage.load_own_answers(cfg)
    assert list(answers) == [t["task_id"] for t in tasks]
    for t in tasks:  # the scripted chunk position decides which tasks pass: 0, 3 of each chunk of 4 fail
        position = tasks.index(t) % 4
        expected = None if position % 3 == 0 else own_code(t)
        assert answers[t["task_id"]] == expected
    assert summary["with_own_answer"] == sum(code is not None for code in answers.values())
    trained = stage.with_own_answers(task_suite(cfg)["train"], answers)
    for before, after in zip(task_suite(cfg)["train"], trained):
        assert after["code"] == (answers.get(before["task_id"]) or before["code"])
        assert {k: v for k, v in after.items() if k != "code"} == {k: v for k, v in before.items() if k != "code"}


def test_an_interrupted_stage_resumes_with_the_draws_of_an_uninterrupted_one(run_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(stage, "CHUNK", 4)
    whole = ScriptedGeneration()
    monkeypatch.setattr(evaluate, "generate_completions", whole)
    stage.run_own_answers(config(run_dir), resume=False, log=lambda *a: None)
    expected = answers_file(run_dir).read_text()

    cut = ScriptedGeneration(fail_on_call=2)  # the second chunk is interrupted
    monkeypatch.setattr(evaluate, "generate_completions", cut)
    with pytest.raises(KeyboardInterrupt):
        stage.run_own_answers(config(run_dir, own_answers_temperature=0.9), resume=True, log=lambda *a: None)
    assert answers_file(run_dir).read_text() == expected  # the finished stage is untouched meanwhile
    rest = ScriptedGeneration()
    monkeypatch.setattr(evaluate, "generate_completions", rest)
    stage.run_own_answers(config(run_dir, own_answers_temperature=0.9), resume=True, log=lambda *a: None)
    assert rest.calls == cut.calls[1:] + whole.calls[2:]  # only the chunks not saved, with their own seeds
    assert [seed for seed, _ in whole.calls] == [seed for seed, _ in cut.calls[:1] + rest.calls]


def test_a_partial_stage_from_other_settings_is_not_resumed(run_dir, monkeypatch):
    monkeypatch.setattr(stage, "CHUNK", 4)
    monkeypatch.setattr(evaluate, "generate_completions", ScriptedGeneration(fail_on_call=2))
    with pytest.raises(KeyboardInterrupt):
        stage.run_own_answers(config(run_dir, own_answers_samples=1), resume=True, log=lambda *a: None)
    fresh = ScriptedGeneration()
    monkeypatch.setattr(evaluate, "generate_completions", fresh)
    stage.run_own_answers(config(run_dir), resume=True, log=lambda *a: None)
    assert len(fresh.calls) == 3  # all three chunks of 10 tasks: nothing taken from the 1-sample run


def test_the_stage_is_off_at_zero_samples_and_fine_tuning_keys_ignore_its_old_files(run_dir, monkeypatch):
    generation = ScriptedGeneration()
    monkeypatch.setattr(evaluate, "generate_completions", generation)
    off = config(run_dir, own_answers_samples=0)
    assert stage.run_own_answers(off, log=lambda *a: None) is None and generation.calls == []
    assert stage.load_own_answers(off) == {}
    key = reuse.stage_key(off, "finetune")
    answers_file(run_dir).parent.mkdir(exist_ok=True)
    answers_file(run_dir).write_text(json.dumps({"task_id": "x", "code": "pass"}) + "\n")
    assert reuse.stage_key(off, "finetune") == key  # off: fine-tuning does not read the file
    on = config(run_dir)
    before = reuse.stage_key(on, "finetune")
    answers_file(run_dir).write_text(json.dumps({"task_id": "x", "code": None}) + "\n")
    assert reuse.stage_key(on, "finetune") != before  # on: new answers redo fine-tuning


def test_the_shortest_clean_passing_sample_is_kept():
    fence = "```python\n{}\n```".format
    one = "def f(x):\n    return x + 1"
    longer = "def f(x):\n    y = x + 1\n    return y"
    record = {"completions": [fence(one + "\n" + one), fence(longer), fence(one), fence("def f(x):\n    pass")],
              "statuses": ["passed", "passed", "passed", "failed"]}
    assert stage.own_answer(record) == one  # not the repeated function, not the longer one, not the failure
    record["statuses"] = ["passed", "failed", "failed", "failed"]
    assert stage.own_answer(record) is None  # the only passing one repeats its function


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"task_id": "a", "code": "x = 1"}) + "\n" + '{"task_id": "b", "co')
    assert stage.read_answers(path) == {"a": "x = 1"}


def test_steps_only_samples_the_first_multi_step_tasks_and_nothing_else():
    train = generate_suite(seed=0, n_train=200, n_valid=0, n_test=1, steps_weight=1.0)["train"]
    every = stage.sampled_tasks(train, len(train))
    steps = stage.sampled_tasks(train, 12, steps_only=True)
    assert len(steps) == 12 and all(t["family"] in STEP_FAMILY_NAMES for t in steps)
    assert steps == [t for t in every if t["family"] in STEP_FAMILY_NAMES][:12]  # in the train split's order
    assert any(t["family"] not in STEP_FAMILY_NAMES for t in every[:12])  # the filter removed some


@pytest.fixture(scope="module")
def sampler_run(run_dir, tmp_path_factory):
    """Another run whose fine-tuned model (full weights, not the base's) samples own answers."""
    run = tmp_path_factory.mktemp("sampler")
    (run / "tokenizer.json").write_bytes((run_dir / "tokenizer.json").read_bytes())
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=Tokenizer.load(str(run / "tokenizer.json")).vocab_size, block_size=192,
                            n_layer=1, n_head=2, n_embd=32))
    (run / "finetune").mkdir()
    save_weights(run / "finetune" / "model.safetensors", trainable_state(model, trainable_only=False), model.config)
    return run


def test_own_answers_from_samples_with_that_runs_fine_tuned_model_and_keys_on_its_files(
        run_dir, sampler_run, monkeypatch):
    seen, generation = [], ScriptedGeneration()

    def generate_and_record_the_sampler(model, *args):
        seen.append(model.lm_head.weight.detach().clone())
        return generation(model, *args)
    monkeypatch.setattr(evaluate, "generate_completions", generate_and_record_the_sampler)
    cfg = config(run_dir, own_answers_from=str(sampler_run))
    summary = stage.run_own_answers(cfg, resume=False, log=lambda *a: None)
    expected = ckpt.load_run(sampler_run, stage="finetune")[0].lm_head.weight
    assert seen and all(torch.equal(weight, expected) for weight in seen)
    assert str(sampler_run) in summary["sampler"]
    key = reuse.stage_key(cfg, "own_answers")
    assert key != reuse.stage_key(config(run_dir), "own_answers")  # the base samples otherwise
    weights = sampler_run / "finetune" / "model.safetensors"
    original = weights.read_bytes()
    try:
        torch.manual_seed(2)  # a new fine-tuning of the sampler run: its answers are sampled again
        model = GPT(ckpt.load_run(sampler_run, stage="finetune")[0].config)
        save_weights(weights, trainable_state(model, trainable_only=False), model.config)
        assert reuse.stage_key(cfg, "own_answers") != key
    finally:
        weights.write_bytes(original)


@pytest.mark.parametrize("sampler, message", [("no_finetune", r"holds no fine-tuned model \(finetune/\)"),
                                              ("itself", "is this run: its fine-tuning would replace the sampler")])
def test_own_answers_from_needs_another_finished_run(run_dir, tmp_path, sampler, message):
    (tmp_path / "no_finetune").mkdir()
    path = str(run_dir) if sampler == "itself" else str(tmp_path / sampler)
    with pytest.raises(ConfigError, match=message):
        config(run_dir, own_answers_from=path)
