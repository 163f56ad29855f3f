"""Supervised fine-tuning examples: a task rendered as tokens, with a mask over what is learned.

Three kinds of example, each a prompt followed by a target that ends with <|endoftext|>:

    generate:  <|task|>{text}<|code|>{code}<|endoftext|>
    repair:    <|task|>{text}<|buggy|>{buggy_code}<|code|>{code}<|endoftext|>
    explain:   <|code|>{code}<|explain|>{text}<|endoftext|>
                                         ^^^^^^^^^^^^^^^^^^^^ target (loss_mask = 1)

The loss is summed only where loss_mask is 1: the target (the code for generate/repair, the
description for explain) and the closing <|endoftext|>, which teaches the model to stop. Each
segment is encoded on its own and the special tokens are inserted by id, so the boundary between
prompt and target is exact: no BPE merge can straddle it, and user text can never smuggle in a
special token (the tokenizer refuses such text).

Batches are shifted for next-token prediction: for a rendered sequence s with mask m,

    idx = s[:-1]    targets = s[1:]    loss_mask = m[1:]

so loss_mask[t] says whether targets[t] is a target token. Rows are right-padded with
<|endoftext|> under a zero mask. A sequence must fit the context (len(s) <= block_size + 1);
longer ones are dropped (not truncated: a cut-off target would teach the model to stop
mid-function, or never) and `build_examples` reports how many.

`add_embedding_noise` is NEFTune (--ft_neftune_alpha): noise on the token embeddings while
fine-tuning, a regulariser some instruction-tuning runs gain from (the small preset did not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch

from minilm.data import EOT, to_device

TASK, CODE, BUGGY, EXPLAIN = "<|task|>", "<|code|>", "<|buggy|>", "<|explain|>"
SPECIAL_TOKENS = (EOT, TASK, CODE, BUGGY, EXPLAIN)  # EOT first: id 0 in a trained tokenizer


def special_ids(tok) -> dict[str, int]:
    """The id of each of SPECIAL_TOKENS, or a clear error naming the missing one."""
    missing = [name for name in SPECIAL_TOKENS if name not in tok.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer lacks special token(s) {', '.join(missing)}; train it "
                         f"with special_tokens=minilm.sft.SPECIAL_TOKENS")
    return {name: tok.special_tokens[name] for name in SPECIAL_TOKENS}


# The format table: each kind is a list of (item, is_target); an item is a special token or the
# name of a task field. The target is always last: the model writes it after the prompt.
FORMATS = {
    "generate": [(TASK, 0), ("text", 0), (CODE, 0), ("code", 1), (EOT, 1)],
    "repair": [(TASK, 0), ("text", 0), (BUGGY, 0), ("buggy_code", 0), (CODE, 0), ("code", 1),
               (EOT, 1)],
    "explain": [(CODE, 0), ("code", 0), (EXPLAIN, 0), ("text", 1), (EOT, 1)],
}
KINDS = tuple(FORMATS)


def _format(task: dict) -> list[tuple[str, int]]:
    kind = task.get("kind", "generate")
    if kind not in FORMATS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    return FORMATS[kind]


def _field(task: dict, name: str) -> str:
    value = task.get(name)
    if not isinstance(value, str):
        raise ValueError(f"task {task.get('task_id', '?')!r} of kind {task.get('kind')!r} needs "
                         f"a string field {name!r}, got {type(value).__name__}")
    return value


def _render(tok, task: dict, with_target: bool) -> tuple[list[int], list[int]]:
    ids_of = special_ids(tok)
    ids, loss_mask = [], []
    for item, is_target in _format(task):
        if is_target and not with_target:
            break
        # Special tokens go in by id; each field is encoded on its own (special text refused).
        piece_ids = [ids_of[item]] if item in ids_of else tok.encode(_field(task, item))
        ids += piece_ids
        loss_mask += [is_target] * len(piece_ids)
    return ids, loss_mask


def target_text(task: dict) -> str:
    """What the model must write for this task: the code, or the description for explain."""
    return next(_field(task, item) for item, is_target in _format(task)
                if is_target and item not in SPECIAL_TOKENS)


def render_example(tok, task: dict) -> tuple[list[int], list[int]]:
    """Token ids of the whole example and its loss mask (1 on target tokens and the final EOT)."""
    return _render(tok, task, with_target=True)


def render_prompt(tok, task: dict) -> list[int]:
    """The ids the model is given at generation time: the example up to its target.

    Only the prompt's fields are needed (a generate task without "code" is fine).
    """
    return _render(tok, task, with_target=False)[0]


def stop_token_ids(tok) -> list[int]:
    """Ids that end a completion: every special token (none can occur inside code or prose)."""
    return sorted(special_ids(tok).values())


def extract_completion(tok, generated_ids: Union[Sequence[int], torch.Tensor]) -> str:
    """Decode newly generated ids up to (not including) the first special token."""
    if isinstance(generated_ids, torch.Tensor):
        generated_ids = generated_ids.reshape(-1).tolist()
    stops = set(stop_token_ids(tok))
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


def build_examples(tok, tasks: Sequence[dict], block_size: int) -> Examples:
    """Render every task; drop (and count) those with more than block_size + 1 tokens."""
    ids, loss_masks, n_dropped = [], [], 0
    for task in tasks:
        example_ids, loss_mask = render_example(tok, task)
        if len(example_ids) > block_size + 1:
            n_dropped += 1
            continue
        ids.append(example_ids)
        loss_masks.append(loss_mask)
    return Examples(ids, loss_masks, block_size, special_ids(tok)[EOT], n_dropped)


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
