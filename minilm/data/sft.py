"""Supervised fine-tuning examples: a task rendered as tokens, with a mask over what is learned.

A *format* writes a task (generate, repair or explain) as segments: special tokens, inserted by
id, and pieces of text, each encoded on its own. So the boundary between prompt and target is
exact (no BPE merge can straddle it) and user text can never smuggle in a special token (the
tokenizer refuses such text). There are two formats.

`PlainFormat`, minilm's own, for the bases trained here: a prompt, then a target that ends with
<|endoftext|>.

    generate:  <|task|>{text}<|code|>{code}<|endoftext|>
    repair:    <|task|>{text}<|buggy|>{buggy_code}<|code|>{code}<|endoftext|>
    explain:   <|code|>{code}<|explain|>{text}<|endoftext|>
                                         ^^^^^^^^^^^^^^^^^^^^ target (loss_mask = 1)

`ChatFormat`, ChatML, for pretrained chat models such as SmolLM2: exactly what the model's own
chat template (tokenizer.chat_template in its GGUF file) writes for a system line, the user's
request and the assistant's answer:

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{request}<|im_end|>\n
    <|im_start|>assistant\n{target}<|im_end|>\n
                           ^^^^^^^^^^^^^^^^^^^^ target (loss_mask = 1)

The request is the task's text, verbatim, in a short instruction (CHAT_REQUESTS); the target is
the bare code, or the description for explain. The text between two special tokens is encoded
as one piece, as the template's text would be, except that the target is cut from its
"assistant\n" header: the model then learns after exactly the prompt it is given at generation.

The loss is summed only where loss_mask is 1: the target and the token that closes it
(<|endoftext|> or <|im_end|>), which teaches the model to stop. `format_for(tok)` picks the format
from the tokenizer's special tokens (minilm's own when it has them); every function below also
takes an explicit `fmt`, e.g. ChatFormat(system="You write Python.").

Batches are shifted for next-token prediction: for a rendered sequence s with mask m,

    idx = s[:-1]    targets = s[1:]    loss_mask = m[1:]

so loss_mask[t] says whether targets[t] is a target token. Rows are right-padded with the
format's closing token under a zero mask. A sequence must fit the context (len(s) <=
block_size + 1); longer ones are dropped (not truncated: a cut-off target would teach the model
to stop mid-function, or never) and `build_examples` reports how many.

`add_embedding_noise` is NEFTune (--ft_neftune_alpha): noise on the token embeddings while
fine-tuning, a regulariser some instruction-tuning runs gain from (the small preset did not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch

from minilm.data.tokens import EOT, to_device

TASK, CODE, BUGGY, EXPLAIN = "<|task|>", "<|code|>", "<|buggy|>", "<|explain|>"
SPECIAL_TOKENS = (EOT, TASK, CODE, BUGGY, EXPLAIN)  # EOT first: id 0 in a trained tokenizer
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML's turn delimiters

# The plain format's table: each kind is a list of (item, is_target); an item is a special
# token or the name of a task field. The target is always last: the model writes it after the prompt.
FORMATS = {
    "generate": [(TASK, 0), ("text", 0), (CODE, 0), ("code", 1), (EOT, 1)],
    "repair": [(TASK, 0), ("text", 0), (BUGGY, 0), ("buggy_code", 0), (CODE, 0), ("code", 1),
               (EOT, 1)],
    "explain": [(CODE, 0), ("code", 0), (EXPLAIN, 0), ("text", 1), (EOT, 1)],
}
KINDS = tuple(FORMATS)

# The chat format's user turn per kind ({field} = the task's field, verbatim); the assistant's
# turn is the target field of FORMATS.
CHAT_REQUESTS = {
    "generate": "{text}\nAnswer with the Python code only, without Markdown.",
    "repair": "{text}\nThis attempt has a bug:\n```python\n{buggy_code}\n```\n"
              "Answer with the corrected Python code only, without Markdown.",
    "explain": "Say in one sentence what this Python code does:\n```python\n{code}\n```",
}
# SmolLM2's chat template writes this system line when a conversation has none.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def special_ids(tok) -> dict[str, int]:
    """The id of each of the plain format's SPECIAL_TOKENS, or a clear error naming the missing one."""
    return PlainFormat().special_ids(tok)


def _kind(task: dict) -> str:
    kind = task.get("kind", "generate")
    if kind not in FORMATS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    return kind


def _format(task: dict) -> list[tuple[str, int]]:
    return FORMATS[_kind(task)]


def _field(task: dict, name: str) -> str:
    value = task.get(name)
    if not isinstance(value, str):
        raise ValueError(f"task {task.get('task_id', '?')!r} of kind {task.get('kind')!r} needs "
                         f"a string field {name!r}, got {type(value).__name__}")
    return value


def target_text(task: dict) -> str:
    """What the model must write for this task: the code, or the description for explain."""
    return next(_field(task, item) for item, is_target in _format(task)
                if is_target and item not in SPECIAL_TOKENS)


class Special(str):
    """A special token in a segment list: inserted by its id, never encoded as text."""


class Format:
    """How a task becomes token ids. A subclass gives `segments(task, with_target)`, a list of
    (text or Special, is_target), the special tokens it needs and the one that closes a target."""
    needs: tuple[str, ...] = ()
    end = EOT
    fix = ""  # how to get a tokenizer with `needs`

    def segments(self, task: dict, with_target: bool) -> list[tuple[str, int]]:
        raise NotImplementedError

    def special_ids(self, tok) -> dict[str, int]:
        missing = [name for name in self.needs if name not in tok.special_tokens]
        if missing:
            raise ValueError(f"the tokenizer lacks special token(s) {', '.join(missing)} of the "
                             f"{type(self).__name__}; {self.fix}")
        return {name: tok.special_tokens[name] for name in self.needs}

    def render(self, tok, task: dict, with_target: bool = True) -> tuple[list[int], list[int]]:
        """Token ids and loss mask; without the target: the prompt given at generation time."""
        return self.encode_segments(tok, self.segments(task, with_target))

    def encode_segments(self, tok, segments: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
        ids_of = self.special_ids(tok)
        ids, loss_mask = [], []
        for piece, is_target in segments:
            piece_ids = [ids_of[piece]] if isinstance(piece, Special) else tok.encode(piece)
            ids += piece_ids
            loss_mask += [is_target] * len(piece_ids)
        return ids, loss_mask

    def stop_ids(self, tok) -> list[int]:
        """Ids that end a completion: every special token (none can occur inside code or prose)."""
        return sorted(self.special_ids(tok).values())

    def pad_id(self, tok) -> int:
        return self.special_ids(tok)[self.end]


class PlainFormat(Format):
    """minilm's own format, for bases trained here (the table FORMATS)."""
    needs = SPECIAL_TOKENS
    fix = "train it with special_tokens=minilm.data.sft.SPECIAL_TOKENS"

    def segments(self, task, with_target):
        pieces = []
        for item, is_target in _format(task):
            if is_target and not with_target:
                break
            pieces.append((Special(item) if item in SPECIAL_TOKENS else _field(task, item), is_target))
        return pieces


class ChatFormat(Format):
    """ChatML as SmolLM2's chat template writes it, with `system` as the system line."""
    needs = (IM_START, IM_END)
    end = IM_END
    fix = "use the pretrained model's tokenizer (minilm.formats.gguf_tokenizer)"

    def __init__(self, system: str = SMOLLM2_SYSTEM):
        self.system = system

    def messages(self, task: dict, with_target: bool = True) -> list[dict]:
        """The conversation as chat messages (the input of a chat template)."""
        request = CHAT_REQUESTS[_kind(task)]
        messages = [{"role": "system", "content": self.system},
                    {"role": "user", "content": request.format_map(_TaskFields(task))}]
        if with_target:
            messages.append({"role": "assistant", "content": target_text(task)})
        return messages

    def segments(self, task, with_target):
        pieces = self.conversation(self.messages(task, with_target=False))  # the system and user turns
        if with_target:
            pieces += [(target_text(task), 1), (Special(IM_END), 1), ("\n", 0)]
        return pieces

    def conversation(self, messages: Sequence[dict]) -> list[tuple[str, int]]:
        """Segments of the messages' turns, then the opened assistant turn (the prompt ends there)."""
        pieces = []
        for message in messages:
            # A header and its text are one piece, as the tokenizer reads the template's text.
            pieces += [(Special(IM_START), 0), (f"{message['role']}\n{message['content']}", 0),
                       (Special(IM_END), 0), ("\n", 0)]
        return pieces + [(Special(IM_START), 0), ("assistant\n", 0)]

    def stop_ids(self, tok) -> list[int]:
        """Every special token of the model ends a completion: <|im_end|> closes the answer,
        and no other one (<|endoftext|>, <file_sep>, ...) belongs inside code or prose."""
        self.special_ids(tok)
        return sorted(tok.special_tokens.values())


class _TaskFields:
    """A task's fields for str.format_map, each checked by _field."""

    def __init__(self, task: dict):
        self.task = task

    def __getitem__(self, name: str) -> str:
        return _field(self.task, name)


def format_for(tok) -> Format:
    """The format a tokenizer calls for: minilm's own when it has those special tokens (our
    bases), ChatML when it has <|im_start|> and <|im_end|> (SmolLM2), else a clear error."""
    if all(name in tok.special_tokens for name in SPECIAL_TOKENS):
        return PlainFormat()
    if all(name in tok.special_tokens for name in ChatFormat.needs):
        return ChatFormat()
    missing = [name for name in SPECIAL_TOKENS if name not in tok.special_tokens]
    raise ValueError(f"the tokenizer lacks special token(s) {', '.join(missing)}; train it with "
                     f"special_tokens=minilm.data.sft.SPECIAL_TOKENS, or use a chat model's tokenizer "
                     f"(with {IM_START} and {IM_END})")


def render_example(tok, task: dict, fmt: Optional[Format] = None) -> tuple[list[int], list[int]]:
    """Token ids of the whole example and its loss mask (1 on the target and its closing token)."""
    return (fmt or format_for(tok)).render(tok, task, with_target=True)


def render_prompt(tok, task: dict, fmt: Optional[Format] = None) -> list[int]:
    """The ids the model is given at generation time: the example up to its target.

    Only the prompt's fields are needed (a generate task without "code" is fine).
    """
    return (fmt or format_for(tok)).render(tok, task, with_target=False)[0]


def render_chat_prompt(tok, messages: Sequence[dict], fmt: Optional[ChatFormat] = None) -> list[int]:
    """Chat messages ({"role", "content"}) in ChatML up to the opened assistant turn, as the model's
    chat template writes them with add_generation_prompt; fmt.system's line first when the messages
    have no system turn (SmolLM2's template does the same with its own line)."""
    fmt = fmt or ChatFormat()
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": fmt.system}, *messages]
    return fmt.encode_segments(tok, fmt.conversation(messages))[0]


def stop_token_ids(tok, fmt: Optional[Format] = None) -> list[int]:
    """Ids that end a completion (every special token of the format; <|im_end|> for chat)."""
    return (fmt or format_for(tok)).stop_ids(tok)


def pad_token_id(tok, fmt: Optional[Format] = None) -> int:
    """The id batches are padded with (under a zero mask): the format's closing token."""
    return (fmt or format_for(tok)).pad_id(tok)


def extract_completion(tok, generated_ids: Union[Sequence[int], torch.Tensor],
                       fmt: Optional[Format] = None) -> str:
    """Decode newly generated ids up to (not including) the first stop token."""
    if isinstance(generated_ids, torch.Tensor):
        generated_ids = generated_ids.reshape(-1).tolist()
    stops = set(stop_token_ids(tok, fmt))
    cut = next((i for i, t in enumerate(generated_ids) if t in stops), len(generated_ids))
    return tok.decode(list(generated_ids[:cut]))


@dataclass
class Examples:
    """Rendered examples that fit the context, plus how many did not."""
    ids: list[list[int]]
    loss_masks: list[list[int]]
    block_size: int
    pad_id: int
    n_dropped: int  # examples longer than block_size + 1 tokens

    def __len__(self) -> int:
        return len(self.ids)


def build_examples(tok, tasks: Sequence[dict], block_size: int,
                   fmt: Optional[Format] = None) -> Examples:
    """Render every task; drop (and count) those with more than block_size + 1 tokens."""
    fmt = fmt or format_for(tok)
    ids, loss_masks, n_dropped = [], [], 0
    for task in tasks:
        example_ids, loss_mask = fmt.render(tok, task)
        if len(example_ids) > block_size + 1:
            n_dropped += 1
            continue
        ids.append(example_ids)
        loss_masks.append(loss_mask)
    return Examples(ids, loss_masks, block_size, fmt.pad_id(tok), n_dropped)


def mix_examples(examples: Examples, extra: Examples, fraction: float) -> Examples:
    """examples, then extra's repeated in order until they are `fraction` of the whole (below 1), so
    that uniform draws hold that share of them; examples are repeated too where that takes fewer
    rows than extra has, so that every one of extra's is drawn."""
    if len(extra) == 0 or fraction <= 0 or len(examples) == 0:
        return examples if len(extra) == 0 or fraction <= 0 else extra
    copies = math.ceil(len(extra) * (1 - fraction) / (fraction * len(examples)))
    rows = [i % len(extra) for i in range(round(fraction * copies * len(examples) / (1 - fraction)))]
    return Examples(examples.ids * copies + [extra.ids[r] for r in rows],
                    examples.loss_masks * copies + [extra.loss_masks[r] for r in rows],
                    examples.block_size, examples.pad_id, examples.n_dropped + extra.n_dropped)


def collate(ids: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]], pad_id: int,
            pad_to: Optional[int] = None, device: Union[str, torch.device] = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift and right-pad sequences -> idx, targets, loss_mask, each (B, T).

    T is the longest sequence minus one, or `pad_to` (a fixed shape, e.g. for torch.compile).
    Padding uses pad_id in idx and targets (a valid id, so gathers never fail) and 0 in the mask.
    """
    if not ids:
        raise ValueError("collate needs at least one sequence")
    longest = max(len(s) for s in ids) - 1
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest} "
                         f"positions after the shift); raise pad_to or drop long examples")
    idx = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(ids), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (seq, mask) in enumerate(zip(ids, loss_masks)):
        if len(seq) != len(mask):
            raise ValueError(f"sequence {row} has {len(seq)} ids but {len(mask)} mask entries")
        n = len(seq) - 1
        idx[row, :n] = torch.tensor(seq[:-1])
        targets[row, :n] = torch.tensor(seq[1:])
        loss_mask[row, :n] = torch.tensor(mask[1:])
    return to_device(idx, device), to_device(targets, device), to_device(loss_mask, device)


def get_sft_batch(examples: Examples, batch_size: int,
                  generator: Optional[torch.Generator] = None,
                  device: Union[str, torch.device] = "cpu"):
    """B examples drawn uniformly (with replacement) -> idx, targets, loss_mask (B, T)."""
    if len(examples) == 0:
        raise ValueError(f"no fine-tuning examples fit block_size={examples.block_size} "
                         f"({examples.n_dropped} dropped as too long); raise block_size")
    rows = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
    return collate_rows(examples, rows, device)


def length_grouped_rows(lengths: Sequence[int], batch_size: int, n_batches: int,
                        generator: Optional[torch.Generator] = None) -> list[list[int]]:
    """n_batches batches of example indices, drawn like get_sft_batch but grouped by length.

    All n_batches * batch_size rows are drawn uniformly (with replacement) at once, sorted by length
    and cut into batches, which come back in a random order. Each example is as likely to be drawn
    as before; only which examples share a batch changes. Padding to the longest row then costs a
    few percent of the tokens instead of about 40% (task lengths range from 20 to 120 tokens).
    """
    if not lengths:
        raise ValueError("length_grouped_rows needs at least one example")
    rows = torch.randint(len(lengths), (batch_size * n_batches,), generator=generator).tolist()
    rows.sort(key=lambda r: (lengths[r], r))
    batches = [rows[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    return [batches[i] for i in torch.randperm(n_batches, generator=generator).tolist()]


def collate_rows(examples: Examples, rows: Sequence[int], device: Union[str, torch.device] = "cpu"):
    """The examples at `rows` -> idx, targets, loss_mask (B, T)."""
    return collate([examples.ids[r] for r in rows], [examples.loss_masks[r] for r in rows],
                   examples.pad_id, device=device)


def iter_sft_batches(examples: Examples, batch_size: int,
                     device: Union[str, torch.device] = "cpu") -> Iterator[tuple]:
    """Every example once, in order, in batches of up to batch_size: for exact validation loss."""
    for start in range(0, len(examples), batch_size):
        stop = start + batch_size
        yield collate(examples.ids[start:stop], examples.loss_masks[start:stop],
                      examples.pad_id, device=device)


def add_embedding_noise(model, alpha: float):
    """NEFTune (Jain et al., 2023): while the model trains, add uniform noise of scale
    alpha / sqrt(T * C) to every token embedding (T tokens per row, C channels), so fine-tuning
    cannot lean on the exact embedding of any one word. Returns the hook's handle; .remove() undoes it."""
    def noisy(module, inputs, embeddings):   # embeddings (B, T, C)
        if not module.training:
            return embeddings
        T, C = embeddings.shape[-2:]
        return embeddings + torch.empty_like(embeddings).uniform_(-1, 1) * (alpha / math.sqrt(T * C))
    return model.transformer.wte.register_forward_hook(noisy)
