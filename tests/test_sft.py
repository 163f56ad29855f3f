"""Properties of the fine-tuning format (minilm/data/sft.py): exact loss masks, prompts, batches.

The format table is re-stated here as plain string templates, independent of the module's
segment list, so a mistake in one is caught by the other.
"""
import inspect
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st

from minilm.config import ModelConfig
from minilm.model.gpt import GPT
from minilm.data.sft import (EOT, SPECIAL_TOKENS, add_embedding_noise, build_examples, collate, extract_completion,
                        get_sft_batch, iter_sft_batches, length_grouped_rows, render_example,
                        render_prompt, stop_token_ids, target_text)
from minilm.tokenizer.tokenizer import Tokenizer

TEMPLATES = {
    "generate": "<|task|>{text}<|code|>{code}<|endoftext|>",
    "repair": "<|task|>{text}<|buggy|>{buggy_code}<|code|>{code}<|endoftext|>",
    "explain": "<|code|>{code}<|explain|>{text}<|endoftext|>",
}


# A real minilm Tokenizer, small enough to train in milliseconds, with the fine-tuning specials.
TOK = Tokenizer.train([inspect.getsource(textwrap)], 300, special_tokens=SPECIAL_TOKENS)
# Any text, including newlines and non-ASCII, except the special-token strings themselves.
free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: not any(name in s for name in SPECIAL_TOKENS))


@st.composite
def tasks(draw):
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    task = {"kind": kind, "text": draw(free_text), "code": draw(free_text)}
    if kind == "repair":
        task["buggy_code"] = draw(free_text)
    return task


@given(tasks())
def test_mask_covers_exactly_the_target(task):
    ids, loss_mask = render_example(TOK, task)
    assert len(ids) == len(loss_mask) and set(loss_mask) <= {0, 1}
    assert TOK.decode(ids) == TEMPLATES[task["kind"]].format(**task)
    masked = [i for i, m in zip(ids, loss_mask) if m]
    expected = task["text"] if task["kind"] == "explain" else task["code"]
    assert target_text(task) == expected
    assert TOK.decode(masked) == expected + EOT
    first = loss_mask.index(1)  # the target is one contiguous suffix
    assert all(loss_mask[first:]) and not any(loss_mask[:first])


@given(tasks())
def test_prompt_is_the_example_up_to_the_target(task):
    ids, loss_mask = render_example(TOK, task)
    prompt = render_prompt(TOK, task)
    assert ids[:len(prompt)] == prompt and loss_mask[len(prompt)] == 1 and not any(
        loss_mask[:len(prompt)])
    last = "<|explain|>" if task["kind"] == "explain" else "<|code|>"
    assert prompt[-1] == TOK.special_tokens[last]
    target_field = "text" if task["kind"] == "explain" else "code"
    without_target = {k: v for k, v in task.items() if k != target_field}
    assert render_prompt(TOK, without_target) == prompt  # a prompt needs no answer


@given(tasks(), free_text)
def test_extract_completion_cuts_at_the_first_special_token(task, tail):
    ids, loss_mask = render_example(TOK, task)
    completion = ids[loss_mask.index(1):] + TOK.encode(tail)  # the model kept going after EOT
    assert extract_completion(TOK, completion) == target_text(task)
    assert extract_completion(TOK, torch.tensor(completion)) == target_text(task)
    assert stop_token_ids(TOK) == sorted(TOK.special_tokens.values())


def test_bad_tasks_and_tokenizers_are_refused():
    with pytest.raises(ValueError, match="unknown task kind"):
        render_example(TOK, {"kind": "summarize", "text": "a", "code": "b"})
    with pytest.raises(ValueError, match="buggy_code"):
        render_example(TOK, {"kind": "repair", "text": "a", "code": "b"})
    with pytest.raises(ValueError, match="special token"):
        render_example(TOK, {"kind": "generate", "text": "say <|code|>", "code": "b"})
    with pytest.raises(ValueError, match="lacks special token"):
        render_example(Tokenizer.train(["a b"], 260), {"kind": "generate", "text": "a",
                                                       "code": "b"})


@given(st.lists(tasks(), min_size=1, max_size=6), st.integers(0, 3))
def test_collate_shifts_and_pads(batch_tasks, extra):
    rendered = [render_example(TOK, t) for t in batch_tasks]
    ids, masks = [r[0] for r in rendered], [r[1] for r in rendered]
    width = max(len(s) for s in ids) - 1 + extra
    idx, targets, loss_mask = collate(ids, masks, pad_id=0, pad_to=width)
    assert idx.shape == targets.shape == loss_mask.shape == (len(ids), width)
    for row, (seq, mask) in enumerate(zip(ids, masks)):
        n = len(seq) - 1
        assert idx[row, :n].tolist() == seq[:-1] and targets[row, :n].tolist() == seq[1:]
        assert loss_mask[row, :n].tolist() == mask[1:]
        # Padding: pad id in idx and targets, never counted by the loss.
        assert (idx[row, n:] == 0).all() and (targets[row, n:] == 0).all()
        assert not loss_mask[row, n:].any()
        # What the loss sums over is exactly the target text and its EOT.
        counted = targets[row][loss_mask[row].bool()].tolist()
        assert TOK.decode(counted) == target_text(batch_tasks[row]) + EOT


def test_collate_refuses_a_short_pad_to():
    with pytest.raises(ValueError, match="pad_to"):
        collate([[1, 2, 3, 4]], [[0, 0, 1, 1]], pad_id=0, pad_to=2)


def test_over_length_examples_are_dropped_and_counted():
    tasks_ = [{"kind": "generate", "text": "t", "code": "x = 1\n" * n} for n in range(10)]
    lengths = [len(render_example(TOK, t)[0]) for t in tasks_]
    block_size = sorted(lengths)[5] - 1  # the 6th example has exactly block_size + 1 tokens
    examples = build_examples(TOK, tasks_, block_size)
    assert examples.n_dropped == sum(n > block_size + 1 for n in lengths) > 0
    assert len(examples) + examples.n_dropped == len(tasks_)
    assert max(len(s) for s in examples.ids) == block_size + 1  # the boundary case is kept
    idx, _, _ = next(iter_sft_batches(examples, batch_size=len(examples)))
    assert idx.shape[1] == block_size
    with pytest.raises(ValueError, match="raise block_size"):
        get_sft_batch(build_examples(TOK, tasks_[-1:], 2), 2)


def test_sft_batches_reproducible_and_validation_covers_all_in_order():
    tasks_ = [{"kind": k, "text": f"task {i}", "code": f"def f{i}(): pass", "buggy_code": "x"}
              for i, k in enumerate(["generate", "repair", "explain"] * 4)]
    examples = build_examples(TOK, tasks_, block_size=128)
    a = get_sft_batch(examples, 5, torch.Generator().manual_seed(3))
    b = get_sft_batch(examples, 5, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    seen = []
    for idx, targets, loss_mask in iter_sft_batches(examples, batch_size=5):
        assert idx.shape[0] <= 5
        for row in range(idx.shape[0]):
            seen.append(TOK.decode(targets[row][loss_mask[row].bool()].tolist()))
    assert seen == [target_text(t) + EOT for t in tasks_]


@given(lengths=st.lists(st.integers(2, 120), min_size=1, max_size=60), batch_size=st.integers(1, 8),
       n_batches=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_length_grouping_only_regroups_a_uniform_draw(lengths, batch_size, n_batches, seed):
    batches = length_grouped_rows(lengths, batch_size, n_batches, torch.Generator().manual_seed(seed))
    # The same rows as one uniform draw of n_batches * batch_size, each batch of batch_size ...
    draw = torch.randint(len(lengths), (batch_size * n_batches,), generator=torch.Generator().manual_seed(seed))
    assert sorted(r for b in batches for r in b) == sorted(draw.tolist())
    assert [len(b) for b in batches] == [batch_size] * n_batches
    # ... grouped: the batches' length ranges do not interleave, so padding is at most an ungrouped draw's.
    spans = sorted((min(lengths[r] for r in b), max(lengths[r] for r in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    assert sum(hi * batch_size for _, hi in spans) <= max(lengths[r] for r in draw.tolist()) * len(draw)
    again = length_grouped_rows(lengths, batch_size, n_batches, torch.Generator().manual_seed(seed))
    assert again == batches


def test_generated_suite_renders_with_exact_masks():
    from minilm.data.tasks import generate_suite
    suite = generate_suite(seed=0, n_train=30, n_valid=5, n_test=5)
    records = [r for split in suite.values() for r in split]
    assert {r["kind"] for r in records} == {"generate", "repair", "explain"}
    for record in records:
        ids, loss_mask = render_example(TOK, record)
        assert TOK.decode([i for i, m in zip(ids, loss_mask) if m]) == target_text(record) + EOT
        assert ids[:len(render_prompt(TOK, record))] == render_prompt(TOK, record)


@given(st.integers(1, 12), st.floats(0.5, 20.0))
def test_embedding_noise_trains_within_its_bound_and_leaves_eval_alone(T, alpha):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8))
    idx = torch.randint(0, 50, (3, T))
    clean = model.transformer.wte(idx)
    handle = add_embedding_noise(model, alpha)
    noisy = model.transformer.wte(idx)  # training mode: clean + U(-1, 1) * alpha / sqrt(T * C)
    bound = alpha / (T * 8) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= bound
    model.eval()
    assert torch.equal(model.transformer.wte(idx), clean)  # evaluation and generation see no noise
    model.train()
    handle.remove()
    assert torch.equal(model.transformer.wte(idx), clean)
