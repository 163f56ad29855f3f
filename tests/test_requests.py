"""The requests split: frozen, well formed, every reference passes its asserts in our sandbox and a
stub does not, and every request renders in both fine-tuning formats."""
import ast
import hashlib
import inspect
import json
import textwrap

import pytest

from minilm.data import sft
from minilm.data.requests import REQUESTS_FILE, SPLIT, load_requests, requests_fingerprint
from minilm.evaluation.execution import run_program, run_programs
from minilm.tokenizer.tokenizer import Tokenizer

# The SHA-256 of minilm/data/requests.jsonl. The split is a yardstick: runs are compared on it, so
# it must not drift. To change it on purpose, update this hash and say why in the commit.
PINNED_SHA256 = "9a5b43c4b131f6a8b473cd3ce9fe8476146158ba6e530168b1746fa2aa91cb5f"
N_REQUESTS = 168
WORKERS = 8  # programs in flight: each is mostly interpreter start-up, so more than the cores helps


@pytest.fixture(scope="module")
def requests():
    return load_requests()


def test_the_file_is_frozen():
    assert hashlib.sha256(REQUESTS_FILE.read_bytes()).hexdigest() == requests_fingerprint() == PINNED_SHA256, (
        "minilm/data/requests.jsonl changed; if on purpose, pin its new SHA-256 in tests/test_requests.py")


def test_every_request_is_a_generate_task_that_names_and_defines_its_function(requests):
    assert len(requests) == N_REQUESTS == len({r["task_id"] for r in requests})
    assert len({r["text"] for r in requests}) == N_REQUESTS
    for r in requests:
        assert (r["kind"], r["split"]) == ("generate", SPLIT) and r["category"]
        assert r["entry_point"] in r["text"], r["task_id"]  # the request says what to call it
        defined = {node.name for node in ast.parse(r["code"]).body if isinstance(node, ast.FunctionDef)}
        assert r["entry_point"] in defined, r["task_id"]
        assert len(r["test_list"]) >= 3 and all(t.startswith("assert ") and r["entry_point"] + "(" in t
                                                for t in r["test_list"]), r["task_id"]


def test_every_reference_passes_in_the_sandbox(requests):
    """Each reference runs as the evaluation runs an answer: one sandboxed program, then its asserts."""
    results = run_programs([(r["code"], r["test_list"]) for r in requests], timeout=5.0, workers=WORKERS)
    failed = [(r["task_id"], result.status, result.detail) for r, result in zip(requests, results)
              if not result.passed]
    assert failed == []


# Each (function, asserts) in a namespace of its own, all in one sandboxed program: a stub is cheap
# to judge, and 168 more interpreter start-ups would double this file's time. Prints what passed.
EACH_IN_ITS_NAMESPACE = """
import json
passed = []
for task_id, code, tests in json.loads(JOBS):
    namespace = {}
    try:
        exec(code, namespace)
        for test in tests:
            exec(test, namespace)
    except Exception:
        continue
    passed.append(task_id)
print("passed:", json.dumps(passed))
"""


def passed_each_in_its_namespace(jobs: list[tuple[str, str, list[str]]]) -> list[str]:
    """The task ids whose code passes every one of its asserts, (task_id, code, asserts) per job."""
    # the one test: the loop ran to its end (a program without tests cannot pass, execution.NO_TESTS)
    result = run_program(f"JOBS = {json.dumps(jobs)!r}\n" + EACH_IN_ITS_NAMESPACE,
                         ["assert isinstance(passed, list)"], timeout=30.0)
    assert result.passed, result.detail
    return json.loads(result.output.split("passed:", 1)[1])


def test_a_pass_bodied_stub_fails_every_request(requests):
    stubs = [(r["task_id"], f"def {r['entry_point']}(*args, **kwargs):\n    pass\n", r["test_list"])
             for r in requests]
    assert passed_each_in_its_namespace(stubs) == []
    # the same program passes the references: it does run the asserts
    assert passed_each_in_its_namespace([(r["task_id"], r["code"], r["test_list"]) for r in requests]) == [
        r["task_id"] for r in requests]


@pytest.fixture(scope="module")
def tokenizers():
    """minilm's own format and ChatML, each on a small trained tokenizer (any text encodes)."""
    source = [inspect.getsource(textwrap)]
    return {"plain": Tokenizer.train(source, 300, special_tokens=sft.SPECIAL_TOKENS),
            "chat": Tokenizer.train(source, 300, special_tokens=(sft.EOT, sft.IM_START, sft.IM_END))}


def test_every_request_renders_in_both_formats_from_its_text_and_code_alone(requests, tokenizers):
    """A request has no template or slots: the prompt is its text, the target its code, in either format."""
    plain, chat = tokenizers["plain"], tokenizers["chat"]
    for r in requests:
        assert plain.decode(sft.render_prompt(plain, r)) == sft.TASK + r["text"] + sft.CODE
        ids, mask = sft.render_example(plain, r)
        assert plain.decode([i for i, m in zip(ids, mask) if m]) == r["code"] + sft.EOT
        request = sft.CHAT_REQUESTS["generate"].format(text=r["text"])
        assert chat.decode(sft.render_prompt(chat, r)) == (
            f"{sft.IM_START}system\n{sft.SMOLLM2_SYSTEM}{sft.IM_END}\n{sft.IM_START}user\n{request}{sft.IM_END}\n"
            f"{sft.IM_START}assistant\n")
        ids, mask = sft.render_example(chat, r)
        assert chat.decode([i for i, m in zip(ids, mask) if m]) == r["code"] + sft.IM_END
