"""Sample from a trained run: write code for a task, continue free text, or check against tests.

    python sample.py --run RUN_DIR --task "write a function that returns the sum of two numbers"
    python sample.py --run RUN_DIR --prompt "def fibonacci(n):" --temperature 0.8 --num_samples 3
    python sample.py --run RUN_DIR --task_file tasks/test_seen.jsonl --task_id test_seen/3 --check
    python sample.py --run RUN_DIR --interactive            # one task per line on stdin
    python sample.py --init smollm2 --task "reverse a list"  # a pretrained base, no run needed
    python sample.py --init smollm2 --prompt "def fib(n):"   # raw text, no chat format

Tokens are printed as they are sampled (KV-cached generation, UTF-8-safe stream decoding).
Greedy decoding by default (--temperature 0); --stage picks the pretrained or the fine-tuned model
(default: fine-tuned when the run has one; a LoRA adapter is applied to its base and merged).
--init samples a pretrained base as it ships (minilm/pretrained.py: "smollm2", a .gguf file or a
Hugging Face Llama directory): a task goes in the base's chat format, the same prompt a run built
on it is evaluated with; --prompt is continued as raw text.
"""
from __future__ import annotations

import argparse
import sys

import torch

from minilm.checkpoint import load_run
from minilm.config import ConfigError
from minilm.data import sft
from minilm.data.tasks import load_jsonl
from minilm.evaluation.evaluate import task_tests
from minilm.evaluation.execution import run_program
from minilm.generation import decode
from minilm.pretrained import load_base_model, load_base_tokenizer, resolve_init


def load_model(run_dir: str, stage: str = "auto", device: str = "cpu"):
    """(model, tokenizer) of a run directory; see minilm.checkpoint for the layout."""
    return load_run(run_dir, stage=None if stage == "auto" else stage, device=device)


def load_base(init: str, device: str = "cpu"):
    """(model, tokenizer) of a pretrained base as it ships (--init)."""
    base = resolve_init(init)
    tok = load_base_tokenizer(base)
    return load_base_model(base).to(device), tok


def stream_completion(model, tok, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                      top_k, top_p, seed: int, out=sys.stdout) -> str:
    """Sample after prompt_ids until a special token, printing text as it comes; returns it."""
    if not prompt_ids:
        raise ConfigError("the prompt is empty; give some text")
    if len(prompt_ids) > model.config.block_size:
        raise ConfigError(f"the prompt has {len(prompt_ids)} tokens but the model's context holds "
                          f"{model.config.block_size}; shorten it")
    stops = set(tok.special_tokens.values())
    decoder, pieces = tok.stream_decoder(), []
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    for token in decode.generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, seed):
        token_id = int(token[0])
        if token_id in stops:
            break
        pieces.append(decoder.push([token_id]))
        out.write(pieces[-1])
        out.flush()
    pieces.append(decoder.flush())
    out.write(pieces[-1] + "\n")
    return "".join(pieces)


def find_task(path: str, task_id: str) -> dict:
    tasks = load_jsonl(path)
    for task in tasks:
        if str(task["task_id"]) == task_id:
            return task
    raise ConfigError(f"{path}: no task with task_id {task_id!r} ({len(tasks)} tasks in the file)")


def check(task: dict, code: str, timeout: float) -> str:
    """Run the completion against the task's tests in the sandbox; one line saying how it went."""
    result = run_program(code, task_tests(task), timeout=timeout)
    detail = f": {result.detail}" if result.detail else ""
    return f"[check] {result.status}{detail} (isolation: {result.isolation})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="run directory (train.py --out_dir)")
    model.add_argument("--init", help="a pretrained base instead of a run: smollm2, a .gguf file or a "
                                      "Hugging Face Llama directory")
    parser.add_argument("--stage", default="auto", choices=["auto", "pretrain", "finetune"])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a task description; the model writes the code")
    source.add_argument("--prompt", help="free text for the model to continue")
    source.add_argument("--task_file", help="a JSONL task file (with --task_id)")
    source.add_argument("--interactive", action="store_true", help="read tasks from stdin, one a line")
    parser.add_argument("--task_id", help="which task of --task_file")
    parser.add_argument("--check", action="store_true", help="run the code against the task's tests")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per --check run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.task_file and not args.task_id:
        parser.error("--task_file needs --task_id")
    if args.check and not args.task_file:
        parser.error("--check needs a task with tests: use --task_file F --task_id ID")
    if args.init is not None and args.stage != "auto":
        parser.error("--stage picks a stage of a --run; --init samples the base as it ships")
    if args.num_samples < 1 or args.max_new_tokens < 1:
        parser.error("--num_samples and --max_new_tokens must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.task is not None and not args.task.strip():
            raise ConfigError("the task is empty; describe the function to write")
        task = find_task(args.task_file, args.task_id) if args.task_file else None
        model, tok = load_base(args.init, args.device) if args.init else load_model(args.run, args.stage, args.device)

        def sample(prompt_ids, task=None):
            for i in range(args.num_samples):
                if args.num_samples > 1:
                    print(f"--- sample {i + 1}")
                text = stream_completion(model, tok, prompt_ids, args.max_new_tokens, args.temperature,
                                         args.top_k, args.top_p, args.seed + i)
                if args.check:
                    print(check(task, text, args.timeout))

        if args.prompt is not None:
            sample(tok.encode(args.prompt, allowed_special="all"))
        elif task is not None:
            print(f"# {task['task_id']} ({task.get('kind', 'generate')}): {task['text']}")
            sample(sft.render_prompt(tok, task), task)
        elif args.task is not None:
            sample(sft.render_prompt(tok, {"kind": "generate", "text": args.task}))
        else:  # interactive
            for line in sys.stdin:
                if line.strip():
                    try:
                        sample(sft.render_prompt(tok, {"kind": "generate", "text": line.strip()}))
                    except ConfigError as error:  # one bad line does not end the session
                        print(f"error: {error}", file=sys.stderr)
    except (ConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
