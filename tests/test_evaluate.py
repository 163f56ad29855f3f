"""Evaluation: the pass@k estimator, reports recomputed from their records, and the model loop.

The model tests use a tiny random GPT: its code never passes, which is fine, because what is
checked are properties (batched = one at a time, teacher-forced loss = minilm.loss on the same
batch, report = a function of its records), and the reference solutions show the scoring side.
"""
import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from minilm.checkpoint import save_weights, trainable_state
from minilm.config import ModelConfig
from minilm.data import sft
from conftest import ScriptedModel
from minilm.evaluation.evaluate import (build_report, evaluate_model, generate_completions, score_completions,
                                        teacher_forced)
from minilm.generation.completions import batches_by_length
from minilm.loss import nll_loss
from minilm.evaluation.metrics import (compare_reports, pass_at_k, pass_at_k_reference, summarize,
                            summarize_group, write_comparison, write_report)
from minilm.data.tasks import generate_suite
from minilm.model.gpt import GPT
from minilm.tokenizer.tokenizer import Tokenizer


# ---------------------------------------------------------------- pass@k
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_enumerating_every_subset(nck):
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute_force = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute_force, abs=1e-12)
    assert pass_at_k_reference(n, c, k) == pytest.approx(brute_force, abs=1e-12)


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_stable_where_binomials_are_huge(nck):
    n, c, k = nck
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(pass_at_k_reference(n, c, k), abs=1e-9)
    if k == 1:
        assert value == pytest.approx(c / n)  # pass@1 is the fraction of passing samples


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(3, 4, 1), (3, 1, 4), (3, 1, 0), (0, 0, 1)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(n, c, k)


# ---------------------------------------------------------------- reports from records
KINDS = st.sampled_from(["generate", "repair", "explain"])


@st.composite
def records(draw):
    out = []
    n = draw(st.integers(1, 6))
    for i in range(draw(st.integers(1, 12))):
        kind = draw(KINDS)
        record = {"task_id": i, "kind": kind, "split": draw(st.sampled_from(["test_seen", "test_compose"])),
                  "family": draw(st.sampled_from(["add", "gcd", "filter"]))}
        if kind == "explain":
            p, r = draw(st.floats(0, 1)), draw(st.floats(0, 1))
            record.update(precision=p, recall=r, f1=0.0 if p + r == 0 else 2 * p * r / (p + r))
        else:
            c = draw(st.integers(0, n))
            record.update(n=n, c=c, statuses=["passed"] * c + ["failed"] * (n - c))
        tokens = draw(st.integers(0, 20))
        record.update(tf_tokens=tokens, tf_nll=draw(st.floats(0, 50)) * tokens,
                      tf_correct=draw(st.integers(0, tokens)))
        out.append(record)
    return out


@given(records())
def test_summary_numbers_are_recomputed_from_the_records(recs):
    summary = summarize(recs)
    code = [r for r in recs if r["kind"] != "explain"]
    explain = [r for r in recs if r["kind"] == "explain"]
    overall = summary["overall"]
    assert overall["tasks"] == len(recs) == sum(g["tasks"] for g in summary["by_split"].values())
    if code:
        assert overall["pass@1"] == pytest.approx(sum(r["c"] / r["n"] for r in code) / len(code))
        assert sum(overall["statuses"].values()) == sum(r["n"] for r in code)
    else:
        assert "pass@1" not in overall
    if explain:
        assert overall["explain_f1"] == pytest.approx(sum(r["f1"] for r in explain) / len(explain))
    tokens = sum(r["tf_tokens"] for r in recs)
    if tokens:
        loss = sum(r["tf_nll"] for r in recs) / tokens
        assert overall["tf_loss"] == pytest.approx(loss)
        assert overall["tf_perplexity"] == pytest.approx(math.exp(loss))
        assert overall["tf_token_accuracy"] == pytest.approx(sum(r["tf_correct"] for r in recs) / tokens)
    ks = [int(key[5:]) for key in overall if key.startswith("pass@")] or [1]
    for field in ("split", "kind", "family"):  # each group is the summary of its own records
        for name, group in summary[f"by_{field}"].items():
            assert group == summarize_group([r for r in recs if r[field] == name], ks)


@given(records())
def test_comparison_shows_both_reports_and_the_change(recs):
    before = build_report(recs, label="before", isolation="limits")
    better = [dict(r, c=r["n"]) if r["kind"] != "explain" else r for r in recs]
    after = build_report(better, label="after", isolation="limits")
    table = compare_reports(before, after)
    overall = table.splitlines()[2]
    if "pass@1" in after["summary"]["overall"]:
        old, new = before["summary"]["overall"]["pass@1"], after["summary"]["overall"]["pass@1"]
        assert f"{old:.3f} -> {new:.3f} ({new - old:+.3f})" in overall
    assert len(table.splitlines()) == 2 + 1 + sum(len(after["summary"][g]) for g in ("by_split", "by_kind", "by_family"))


def test_reports_round_trip_through_json(tmp_path):
    recs = [{"task_id": 0, "kind": "generate", "split": "test_seen", "family": "add", "n": 2, "c": 1,
             "statuses": ["passed", "failed"], "tf_tokens": 4, "tf_nll": 2.0, "tf_correct": 3}]
    report = build_report(recs, label="after", isolation="limits", max_new_tokens=64)
    json_path, md_path = write_report(report, tmp_path, "finetune")
    loaded = json.loads(json_path.read_text())
    assert loaded["summary"] == summarize(loaded["records"])  # the file explains its own numbers
    assert loaded["meta"]["isolation"] == "limits" and "pass@1" in md_path.read_text()
    paths = write_comparison(report, report, tmp_path)
    assert "+0.000" in paths[1].read_text() and json.loads(paths[0].read_text())["after"]["summary"]


# ---------------------------------------------------------------- the model loop
@pytest.fixture(scope="module")
def suite():
    return generate_suite(seed=0, n_train=40, n_valid=0, n_test=4)


@pytest.fixture(scope="module")
def tok(suite):
    texts = [t["text"] + t["code"] for t in suite["train"]]
    return Tokenizer.train(texts, 320, special_tokens=sft.SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=1, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def tasks(suite):
    return suite["test_seen"] + suite["test_phrasing"] + suite["test_compose"]


def test_batched_generation_equals_one_task_at_a_time(model, tok, tasks):
    batched = generate_completions(model, tok, tasks, max_new_tokens=8, batch_size=8)
    alone = [generate_completions(model, tok, [task], max_new_tokens=8)[0] for task in tasks]
    assert batched == alone
    sampled = generate_completions(model, tok, tasks[:3], max_new_tokens=8, n_samples=3,
                                   temperature=1.0, seed=5)
    assert sampled == generate_completions(model, tok, tasks[:3], max_new_tokens=8, n_samples=3,
                                           temperature=1.0, seed=5)  # seeded: reproducible
    assert all(len(s) == 3 for s in sampled)


def test_progress_counts_the_prompts_that_fit_batch_by_batch(model, tok, tasks):
    from minilm.generation.completions import generate_from_prompts
    prompts = [sft.render_prompt(tok, task) for task in tasks[:5]] + [[1] * (model.config.block_size + 1)]
    calls = []
    completions = generate_from_prompts(model, prompts, sft.stop_token_ids(tok), tok.decode, max_new_tokens=2,
                                        batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert completions[-1] is None  # too long for the context: never generated, never counted
    done = [0] + [d for d, _ in calls]  # once per batch (of at most 2), up to the 5 that fit
    assert done[-1] == 5 and all(1 <= b - a <= 2 for a, b in zip(done, done[1:]))
    assert {total for _, total in calls} == {5}


@pytest.mark.parametrize("family", [dict(position="rope"),
                                    dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False)])
def test_rotary_models_batch_prompts_of_any_length_left_padded(tok, tasks, family):
    """Batches mix prompt lengths (left padding) and still equal one task at a time, greedy."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=1, n_head=2, n_embd=32,
                            **family)).eval()
    lengths = [len(sft.render_prompt(tok, task)) for task in tasks]
    assert any(len({lengths[i] for i in batch}) > 1 for batch in batches_by_length(lengths, 8, 192, True))
    batched = generate_completions(model, tok, tasks, max_new_tokens=8, batch_size=8)
    alone = [generate_completions(model, tok, [task], max_new_tokens=8)[0] for task in tasks]
    assert batched == alone


@given(st.lists(st.integers(1, 20), max_size=30), st.integers(1, 5), st.booleans())
def test_batches_by_length_hold_every_fitting_prompt_once(lengths, rows, padded):
    batches = batches_by_length(lengths, rows, block_size=15, padded=padded)
    assert sorted(i for batch in batches for i in batch) == [i for i, n in enumerate(lengths) if n <= 15]
    assert all(1 <= len(batch) <= rows for batch in batches)
    if padded:  # sorted by length, cut in order: fewest batches, least padding
        order = [lengths[i] for batch in batches for i in batch]
        assert order == sorted(order) and len(batches) == -(-len(order) // rows)
    else:
        assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)


def test_teacher_forced_numbers_match_the_loss_module(model, tok, tasks):
    forced = teacher_forced(model, tok, tasks, batch_size=5)
    examples = [sft.render_example(tok, t) for t in tasks]
    idx, targets, loss_mask = sft.collate([e[0] for e in examples], [e[1] for e in examples],
                                          sft.special_ids(tok)[sft.EOT])
    with torch.no_grad():
        logits = model(idx)
    expected = nll_loss(logits, targets, loss_mask, normalize="token")
    total_tokens = sum(f["tf_tokens"] for f in forced)
    assert total_tokens == int(loss_mask.sum())
    assert sum(f["tf_nll"] for f in forced) / total_tokens == pytest.approx(float(expected), rel=1e-5)


def test_reference_solutions_pass_and_wrong_ones_fail(tasks):
    code_tasks = [t for t in tasks if t["kind"] in ("generate", "repair")]
    right = score_completions(code_tasks, [[t["code"]] for t in code_tasks], timeout=5)
    wrong = [[f"def {t['entry_point']}(*args):\n    return object()\n"] for t in code_tasks]
    missing = [["def some_other_name():\n    pass\n"] for t in code_tasks]
    assert all(r["c"] == 1 and r["statuses"] == ["passed"] for r in right)
    for record in score_completions(code_tasks, wrong, timeout=5):
        assert record["c"] == 0 and record["statuses"] == ["failed"]
        assert record["details"][0].startswith("assert ")  # the assertion that did not hold
    for record in score_completions(code_tasks, missing, timeout=5):
        assert record["statuses"] == ["crashed"] and "NameError" in record["details"][0]


def test_a_fenced_answer_runs_as_its_block_and_the_prose_around_it_is_ignored(tasks):
    code_tasks = [t for t in tasks if t["kind"] in ("generate", "repair")]
    fenced = [[f"Here it is:\n```python\n{t['code']}\n```\nIt works because ... `x` ..."] for t in code_tasks]
    assert all(r["statuses"] == ["passed"] for r in score_completions(code_tasks, fenced, timeout=5))


@given(prose=st.text(alphabet="ab `\n", max_size=12), code=st.text(alphabet="xy =\n", max_size=12),
       after=st.text(alphabet="ab `\n", max_size=12))
def test_fence_closed_is_true_from_the_token_that_closes_the_first_block(tok, prose, code, after):
    """Asked after every token of a reply, fence_closed turns true exactly at the first prefix whose
    text holds two fences, whatever the tokenization (a fence may span tokens)."""
    from minilm.generation.completions import fence_closed
    done = fence_closed(tok)
    ids = tok.encode(prose + "```python\n" + code + "```" + after)
    answers = [done(ids[:n]) for n in range(1, len(ids) + 1)]
    expected = [tok.decode(ids[:n]).count("```") >= 2 for n in range(1, len(ids) + 1)]
    first = expected.index(True)
    assert answers[:first + 1] == expected[:first + 1]


def test_generation_ends_a_code_answer_when_its_fenced_block_closes(tok, tasks, monkeypatch):
    """A model that would write a fenced block, then prose, stops at the fence: the prose costs
    no tokens, and the completion is the reply up to its closing fence."""
    from minilm.evaluation import evaluate
    reply = tok.encode("```python\nx = 1\n```\nThis sets x to one, as you can see.")
    code_task = next(t for t in tasks if t["kind"] == "generate")
    explain_task = next(t for t in tasks if t["kind"] == "explain")
    model = ScriptedModel(reply, ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=1, n_head=2,
                                             n_embd=32))
    fenced, prose = evaluate.generate_completions(model, tok, [code_task, explain_task],
                                                  max_new_tokens=len(reply) + 2)
    assert fenced == [tok.decode(reply).split("\nThis")[0]]  # up to the closing fence
    assert prose == [tok.decode(reply)]  # an explanation is prose: read to the end


def test_evaluate_model_records_make_the_report(model, tok, tasks, tmp_path):
    recs = evaluate_model(model, tok, tasks, max_new_tokens=12, timeout=5)
    assert [r["task_id"] for r in recs] == [t["task_id"] for t in tasks]
    for record, task in zip(recs, tasks):
        assert record["split"] == task["split"] and record["family"] == task["family"]
        assert record["tf_tokens"] > 0
        if task["kind"] == "explain":
            assert 0.0 <= record["f1"] <= 1.0
        else:
            assert record["n"] == 1 and len(record["statuses"]) == 1
    report = build_report(recs, label="random init")
    assert set(report["summary"]["by_split"]) == {"test_seen", "test_phrasing", "test_compose"}
    assert report["summary"] == summarize(recs)


def test_a_prompt_longer_than_the_context_is_a_recorded_failure(model, tok, tasks):
    long_task = dict(tasks[0], kind="generate", text="word " * 400)
    completions = generate_completions(model, tok, [long_task], max_new_tokens=4)
    assert completions == [None]
    record = score_completions([long_task], completions)[0]
    assert record["statuses"] == ["prompt_too_long"] and record["c"] == 0


# ---------------------------------------------------------------- sample.py
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model, tok):
    run = tmp_path_factory.mktemp("run")
    tok.save(str(run / "tokenizer.json"))
    (run / "pretrain").mkdir()
    save_weights(run / "pretrain" / "model.safetensors", trainable_state(model, trainable_only=False),
                 model.config)
    return run


def sample(*args):
    return subprocess.run([sys.executable, "sample.py", *args], capture_output=True, text=True, timeout=120)


def test_sample_streams_what_generate_produces(run_dir, model, tok):
    done = sample("--run", str(run_dir), "--task", "write a function that adds two numbers",
                  "--max_new_tokens", "10")
    assert done.returncode == 0, done.stderr
    expected = generate_completions(model, tok, [{"kind": "generate", "text":
                                                  "write a function that adds two numbers"}], 10)[0][0]
    assert done.stdout == expected + "\n"


def test_sample_errors_are_one_line_with_exit_code_2(run_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_script", Path(__file__).parents[1] / "sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for args in (["--run", str(tmp_path / "missing"), "--task", "add two numbers"],
                 ["--run", str(run_dir), "--task", "   "],
                 ["--run", str(run_dir), "--prompt", "x " * 400]):
        assert script.main(args) == 2, args
        stderr = capsys.readouterr().err
        assert stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1, stderr
