"""The chat format (minilm/data/sft.py, ChatFormat) against the model's own chat template.

The referee is SmolLM2's Jinja template from its GGUF file, rendered by transformers (as
`apply_chat_template` does) for the same messages: the rendered ids must decode to exactly its
text. The mask, prompt and refusal properties also run on a small trained tokenizer with
ChatML's tokens, so they hold without the 98 MB file.
"""
import inspect
import re
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st

from minilm.data.sft import (EOT, IM_END, IM_START, SMOLLM2_SYSTEM, SPECIAL_TOKENS, ChatFormat,
                        PlainFormat, build_examples, collate, extract_completion, format_for,
                        pad_token_id, render_example, render_prompt, stop_token_ids, target_text)
from minilm.tokenizer.tokenizer import Tokenizer

CHAT_TOK = Tokenizer.train([inspect.getsource(textwrap)], 320, special_tokens=(EOT, IM_START, IM_END))
# Any text without special-token look-alikes (SmolLM2 has 17: <|im_end|>, <file_sep>, ...), nor
# the bytes SmolLM2's vocabulary drops (control bytes, planes 4-16), which no decode gives back.
SPECIAL_LIKE = re.compile(r"<\|?[a-z_]+\|?>")
free_text = st.text(st.characters(blacklist_categories=("Cs",), max_codepoint=0x3FFFF,
                                  blacklist_characters="\x04\x06\x13\x14\x16\x1d"),
                    max_size=40).filter(lambda s: not SPECIAL_LIKE.search(s))


@st.composite
def tasks(draw):
    kind = draw(st.sampled_from(["generate", "repair", "explain"]))
    task = {"kind": kind, "text": draw(free_text), "code": draw(free_text)}
    if kind == "repair":
        task["buggy_code"] = draw(free_text)
    return task


formats = st.sampled_from([ChatFormat(), ChatFormat(system="You write Python."), ChatFormat(system="")])


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_path):
    """(tokenizer, chat template) of SmolLM2, read from one GGUFReader."""
    pytest.importorskip("gguf")
    from minilm.formats.gguf_tokenizer import chat_template_from_gguf, open_gguf, tokenizer_from_gguf
    reader = open_gguf(smollm2_gguf_path)
    return tokenizer_from_gguf(reader), chat_template_from_gguf(reader)


def apply_template(template, messages, add_generation_prompt=False):
    """transformers' rendering of a chat template, the one `apply_chat_template` uses."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template([messages], chat_template=template,
                                              add_generation_prompt=add_generation_prompt)
    return rendered[0]


def referee_messages(fmt, task, with_target=True):
    """Our messages, but with the default system line left to the template to write."""
    messages = fmt.messages(task, with_target)
    return messages[1:] if fmt.system == SMOLLM2_SYSTEM else messages


# ------------------------------------------------------------------ the template is the referee
@given(task=tasks(), fmt=formats)
def test_example_and_prompt_are_the_templates_text(smollm2, task, fmt):
    tok, template = smollm2
    ids, loss_mask = render_example(tok, task, fmt)
    text = apply_template(template, referee_messages(fmt, task))
    assert tok.decode(ids) == text
    prompt = render_prompt(tok, task, fmt)
    assert tok.decode(prompt) == apply_template(template, referee_messages(fmt, task, False), True)
    # The same ids as the tokenizer gives the whole text, except where the target starts with
    # whitespace: we cut it from "assistant\n", the prompt the model gets at generation.
    if not target_text(task)[:1].isspace():
        assert ids == tok.encode(text, allowed_special="all")


def test_real_tasks_render_as_the_template_and_default_to_chat(smollm2):
    from minilm.data.tasks import generate_suite
    tok, template = smollm2
    assert isinstance(format_for(tok), ChatFormat)
    for task in generate_suite(seed=0, n_train=12, n_valid=0, n_test=0)["train"]:
        ids, loss_mask = render_example(tok, task)  # the format the tokenizer calls for
        assert ids == tok.encode(apply_template(template, referee_messages(ChatFormat(), task)),
                                 allowed_special="all")
        assert tok.decode([i for i, m in zip(ids, loss_mask) if m]) == target_text(task) + IM_END
    assert tok.special_tokens[IM_END] in stop_token_ids(tok)
    with pytest.raises(ValueError, match="<file_sep>"):
        render_example(tok, {"kind": "generate", "text": "a <file_sep> b", "code": "x"})


# ------------------------------------------------------------------ mask, prompt, stops
@given(task=tasks(), fmt=formats)
def test_mask_covers_exactly_the_target_and_its_im_end(task, fmt):
    ids, loss_mask = render_example(CHAT_TOK, task, fmt)
    assert len(ids) == len(loss_mask) and set(loss_mask) <= {0, 1}
    first = loss_mask.index(1)
    end = first + len(CHAT_TOK.encode(target_text(task)))
    assert ids[first:end + 1] == CHAT_TOK.encode(target_text(task)) + [CHAT_TOK.special_tokens[IM_END]]
    assert loss_mask == [0] * first + [1] * (end + 1 - first) + [0]  # then only the final "\n"
    assert CHAT_TOK.decode(ids[end + 1:]) == "\n"


@given(task=tasks(), fmt=formats)
def test_prompt_is_the_example_up_to_the_assistant_header(task, fmt):
    ids, loss_mask = render_example(CHAT_TOK, task, fmt)
    prompt = render_prompt(CHAT_TOK, task, fmt)
    assert ids[:len(prompt)] == prompt and loss_mask[len(prompt)] == 1 and not any(loss_mask[:len(prompt)])
    header = [CHAT_TOK.special_tokens[IM_START]] + CHAT_TOK.encode("assistant\n")
    assert prompt[-len(header):] == header
    without_target = {k: v for k, v in task.items() if k != ("text" if task["kind"] == "explain" else "code")}
    assert render_prompt(CHAT_TOK, without_target, fmt) == prompt  # a prompt needs no answer
    # The user's turn holds the task's fields verbatim.
    request = fmt.messages(task)[1]["content"]
    fields = {"generate": ["text"], "repair": ["text", "buggy_code"], "explain": ["code"]}[task["kind"]]
    assert all(task[name] in request for name in fields)


@given(task=tasks(), tail=free_text)
def test_generation_stops_at_im_end(task, tail):
    ids, loss_mask = render_example(CHAT_TOK, task)
    completion = ids[loss_mask.index(1):] + CHAT_TOK.encode(tail)  # the model kept going
    assert extract_completion(CHAT_TOK, completion) == target_text(task)
    assert extract_completion(CHAT_TOK, torch.tensor(completion)) == target_text(task)
    assert CHAT_TOK.special_tokens[IM_END] in stop_token_ids(CHAT_TOK)


@pytest.mark.parametrize("where", ["text", "code", "buggy_code", "system"])
@pytest.mark.parametrize("special", [IM_START, IM_END, EOT])
def test_smuggled_special_tokens_are_refused(where, special):
    task = {"kind": "repair", "text": "t", "code": "c", "buggy_code": "b"}
    fmt = ChatFormat(system=f"be {special} nice" if where == "system" else "s")
    if where != "system":
        task[where] = f"x{special}y"
    with pytest.raises(ValueError, match="special token"):
        render_example(CHAT_TOK, task, fmt)


def test_the_format_follows_the_tokenizer_or_the_argument():
    plain_tok = Tokenizer.train([inspect.getsource(textwrap)], 300, special_tokens=SPECIAL_TOKENS)
    assert isinstance(format_for(plain_tok), PlainFormat) and isinstance(format_for(CHAT_TOK), ChatFormat)
    task = {"kind": "generate", "text": "add a and b", "code": "def add(a, b):\n    return a + b\n"}
    assert CHAT_TOK.decode(render_prompt(CHAT_TOK, task)).startswith(f"{IM_START}system\n{SMOLLM2_SYSTEM}")
    with pytest.raises(ValueError, match="lacks special token.*<\\|im_start\\|>"):
        render_example(plain_tok, task, ChatFormat())
    with pytest.raises(ValueError, match="lacks special token"):
        render_example(Tokenizer.train(["a b"], 260), task)
    examples = build_examples(CHAT_TOK, [task, {**task, "kind": "explain"}], block_size=512)
    assert examples.pad_id == pad_token_id(CHAT_TOK) == CHAT_TOK.special_tokens[IM_END]
    idx, targets, loss_mask = collate(examples.ids, examples.loss_masks, examples.pad_id)
    for row, kind in enumerate(["generate", "explain"]):
        counted = targets[row][loss_mask[row].bool()].tolist()
        assert CHAT_TOK.decode(counted) == target_text({**task, "kind": kind}) + IM_END
