"""The training objective: the negative log-likelihood of the target tokens, written out.

Fine-tuning data is a set D = {(x_i, y_i)}, i = 1..N, of task descriptions x_i and code y_i
(tokens y_i1 .. y_ik). An autoregressive decoder factorises the probability of the code by the
chain rule, so its negative log is a sum of per-token terms:

    l_i      = - sum_j log P(y_ij | x_i, y_i<j)          one example    (sequence_nll)
    L(theta) = (1/N) sum_i l_i                            the objective  (nll_loss, normalize="sequence")

Each term is one entry of a log-softmax over the vocabulary: log P(v | context) = z_v - logsumexp(z),
where z are the logits the model gives at that position (token_log_probs). Pretraining uses the
per-token mean instead, sum_ij (-log p_ij) / (number of tokens) (normalize="token", nanoGPT's
convention). docs/loss.md derives every step, including the gradient softmax(z) - onehot(y).

Conventions:
  - logits (B, T, V) and targets (B, T) are already aligned: logits[b, t] is the model's prediction
    for targets[b, t]. From a sequence ids (B, T+1): logits = model(ids[:, :-1]), targets = ids[:, 1:],
    and the mask from minilm/data/sft.py shifts the same way, loss_mask = mask[:, 1:].
  - loss_mask (B, T), bool or 0/1, marks the tokens that count: code tokens count, prompt and
    padding tokens do not. Targets at uncounted positions may hold anything (e.g. -1 padding).
  - Logits in bf16 / fp16 are upcast to fp32 before the softmax; fp64 stays fp64.

Two paths compute the same number (tests/test_loss.py proves it): the explicit log-softmax and
gather below (fast=False), and torch's F.cross_entropy (fast=True; a fused kernel on CUDA). A third,
head_sequence_nll, starts one step earlier, from the hidden states before the LM head, and computes
logits only at the counted positions, a chunk of rows at a time: what training uses.

Degenerate input: an example with no counted token is not part of D (it has no code to score), so it
adds nothing to the sum and is not counted in N; a batch with no counted token at all raises
ValueError, as do mismatched shapes, non-integer targets, a mask that is not 0/1, and counted
targets outside [0, V). Non-finite logits give a non-finite loss: that is divergence, for the
trainer to report, not something a loss function should hide.

Run `python -m minilm.loss` for a worked example with a six-word vocabulary.
"""
from __future__ import annotations

import math
import sys
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NORMALIZATIONS = ("sequence", "token")


def _compute_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision logits: exp and sums over a 50k vocabulary need fp32's mantissa."""
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}; "
                        f"pass the model's output logits, not token ids")
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _check_targets(logits: torch.Tensor, targets: torch.Tensor,
                   counted: Optional[torch.Tensor] = None) -> None:
    """Shapes must line up and every counted target must be a token id of the vocabulary."""
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids, got {targets.dtype}; use targets.long()")
    if logits.dim() < 1 or targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal logits shape without the "
                         f"vocabulary axis, {tuple(logits.shape[:-1])}; logits are (B, T, V), targets (B, T)")
    vocab_size = logits.shape[-1]
    outside = (targets < 0) | (targets >= vocab_size)
    if counted is not None:
        outside &= counted
    if outside.any():
        position = tuple(outside.nonzero()[0].tolist())
        raise ValueError(f"target id {targets[position].item()} at position {position} is outside the "
                         f"vocabulary [0, {vocab_size}); use ids below vocab_size, or set loss_mask to 0 "
                         f"there to leave the position out of the loss")


def _check_mask(targets: torch.Tensor, loss_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Return the mask as bool (B, T); no mask means every position counts."""
    if loss_mask is None:
        return torch.ones_like(targets, dtype=torch.bool)
    if loss_mask.shape != targets.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} must equal targets shape "
                         f"{tuple(targets.shape)}; build both from the same token sequence")
    if loss_mask.dtype != torch.bool:
        if not ((loss_mask == 0) | (loss_mask == 1)).all():
            raise ValueError("loss_mask must hold only 0 and 1 (or bool): it selects tokens, it does "
                             "not weight them")
        loss_mask = loss_mask != 0
    return loss_mask


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log P(targets[b, t] | context) for every position: log-softmax written out, then a gather.

    logits (B, T, V), targets (B, T) -> (B, T). With m = max_v z_v,

        log softmax(z)_y = z_y - logsumexp(z) = (z_y - m) - log sum_v exp(z_v - m)

    Subtracting m first keeps every exp() in (0, 1], so logits of +-1e4 neither overflow nor
    underflow to log(0). m is detached: the value does not depend on it, so neither does the gradient.
    """
    _check_targets(logits, targets)
    logits = _compute_dtype(logits)
    max_logit = logits.amax(dim=-1, keepdim=True).detach()                  # (B, T, 1)
    shifted = logits - max_logit                                            # (B, T, V), all <= 0
    log_normalizer = shifted.exp().sum(dim=-1).log()                         # (B, T): logsumexp - m
    target_logit = shifted.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (B, T): z_y - m
    return target_logit - log_normalizer                                    # (B, T), all <= 0


def token_nll(logits: torch.Tensor, targets: torch.Tensor,
              loss_mask: Optional[torch.Tensor] = None, fast: bool = False) -> torch.Tensor:
    """-log P(target | context) at counted positions and exactly 0 elsewhere: (B, T).

    fast=False takes token_log_probs; fast=True takes F.cross_entropy(reduction="none"), the same
    number from torch's fused kernel. nanochat's loss_reduction="none" plays this role.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}; "
                         f"add a batch axis with logits.unsqueeze(0)")
    counted = _check_mask(targets, loss_mask)
    _check_targets(logits, targets, counted)
    # Uncounted targets may be padding like -1: point them at id 0 so the gather is valid; the
    # torch.where below drops whatever they give, value and gradient alike.
    safe_targets = torch.where(counted, targets.long(), 0)
    if fast:
        batch, time, vocab = logits.shape
        nll = F.cross_entropy(_compute_dtype(logits).reshape(batch * time, vocab),
                              safe_targets.reshape(batch * time), reduction="none").view(batch, time)
    else:
        nll = -token_log_probs(logits, safe_targets)
    return torch.where(counted, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor,
                 loss_mask: Optional[torch.Tensor] = None, fast: bool = False):
    """Per-example summed NLL and counted tokens: (nll_sum (B,), n_tokens (B,)).

    nll_sum[i] = l_i = -sum_j log P(y_ij | x_i, y_i<j) over the counted tokens of example i.
    Evaluation adds these up across batches and divides once, so its averages are exact whatever
    the batch size: mean per example = sum(nll_sum) / #examples, per token = sum(nll_sum) / sum(n_tokens).
    """
    nll = token_nll(logits, targets, loss_mask, fast=fast)                  # (B, T)
    n_tokens = _check_mask(targets, loss_mask).sum(dim=1)                   # (B,)
    return nll.sum(dim=1), n_tokens


def nll_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
             normalize: str = "sequence", fast: bool = False) -> torch.Tensor:
    """The objective, a scalar. logits (B, T, V), targets (B, T), loss_mask (B, T) or None (all count).

    normalize="sequence": L = (1/N) sum_i sum_j -log p_ij, the mission's formula; N counts the
        examples with at least one counted token. A long example weighs more than a short one.
    normalize="token":    L = sum_ij -log p_ij / (number of counted tokens), the per-token mean used
        for pretraining; with no mask it equals F.cross_entropy(logits.view(-1, V), targets.view(-1)).
    """
    _check_normalize(normalize)
    return _normalized(*sequence_nll(logits, targets, loss_mask, fast=fast), normalize)


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def _normalized(nll_sum: torch.Tensor, n_tokens: torch.Tensor, normalize: str) -> torch.Tensor:
    """sum_i l_i over N: the examples with a counted token ("sequence") or the counted tokens ("token")."""
    if normalize == "sequence":
        normalizer = (n_tokens > 0).sum()
    else:
        normalizer = n_tokens.sum()
    if normalizer == 0:
        raise ValueError("no position is counted by loss_mask, so the loss is undefined; check that "
                         "the targets (code) were not all truncated or masked out")
    return nll_sum.sum() / normalizer


# ----------------------------------------------------------------------------------------------
# The LM head only where the loss counts

LOGITS_PER_CHUNK = 2**25  # logits alive at once: 128 MiB in fp32, 682 rows of SmolLM2's 49,152-wide head


def head_sequence_nll(hidden: torch.Tensor, head, targets: torch.Tensor,
                      loss_mask: Optional[torch.Tensor] = None, logits_per_chunk: int = LOGITS_PER_CHUNK):
    """sequence_nll(head(hidden), targets, loss_mask), computing logits only where the loss counts.

    hidden (B, T, C) are the final hidden states (model(idx, return_hidden=True)); head maps (N, C)
    to logits (N, V) (model.lm_head). An uncounted position adds exactly 0 to the loss and to its
    gradient (token_nll), so its logits need not exist: in fine-tuning that is the prompt and the
    padding, most of each row, and the head is the widest matmul of a model with a large vocabulary
    (49,152 x 576 for SmolLM2). So: gather the N counted rows of hidden, then, a chunk of rows at a
    time, head -> F.cross_entropy, and put the per-token NLL back in place to sum per example.

    Memory: cross-entropy keeps its (rows, V) log-softmax for backward. When the counted rows need more
    than one chunk of logits_per_chunk logits and autograd is recording, each chunk is recomputed in
    backward (torch.utils.checkpoint), so one chunk's logits live at a time instead of all N x V, for
    one more head matmul per row; a single chunk is computed plainly (nothing to save).
    Returns (nll_sum (B,), n_tokens (B,)); equal to sequence_nll up to float rounding (tests/test_loss.py).
    """
    counted, rows, row_targets, chunk = _counted_rows(hidden, head, targets, loss_mask, logits_per_chunk)
    recompute = rows.size(0) > chunk and torch.is_grad_enabled()
    pieces = []
    for start in range(0, max(rows.size(0), 1), chunk):  # no counted row: one empty chunk keeps the graph
        args = (head, rows[start:start + chunk], row_targets[start:start + chunk])
        pieces.append(checkpoint(_rows_nll, *args, use_reentrant=False) if recompute else _rows_nll(*args))
    return _per_example(counted, torch.cat(pieces)), counted.sum(dim=1)


@torch.no_grad()
def head_sequence_stats(hidden: torch.Tensor, head, targets: torch.Tensor,
                        loss_mask: Optional[torch.Tensor] = None, logits_per_chunk: int = LOGITS_PER_CHUNK):
    """For evaluation: (nll_sum (B,), n_tokens (B,), correct (B,)) with the head only where counted.

    nll_sum is sequence_nll's, by the written-out path (token_log_probs) as evaluation computes it
    from full logits; correct counts the argmax hits per example (token_accuracy's numerator).
    """
    counted, rows, row_targets, chunk = _counted_rows(hidden, head, targets, loss_mask, logits_per_chunk)
    nll, hits = [], []
    for start in range(0, max(rows.size(0), 1), chunk):
        logits, chunk_targets = head(rows[start:start + chunk]), row_targets[start:start + chunk]  # (n, V), (n,)
        nll.append(-token_log_probs(logits, chunk_targets))
        hits.append((logits.argmax(dim=-1) == chunk_targets).long())
    return _per_example(counted, torch.cat(nll)), counted.sum(dim=1), _per_example(counted, torch.cat(hits))


def _counted_rows(hidden, head, targets, loss_mask, logits_per_chunk):
    """Check the input; return counted (B, T), its rows of hidden (N, C) and targets (N,), rows per chunk."""
    if hidden.dim() != 3 or hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden must be (B, T, C) with (B, T) = targets shape {tuple(targets.shape)}, "
                         f"got {tuple(hidden.shape)}; pass model(idx, return_hidden=True)")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids, got {targets.dtype}; use targets.long()")
    counted = _check_mask(targets, loss_mask)                               # (B, T)
    rows, row_targets = hidden[counted], targets[counted].long()            # (N, C), (N,)
    vocab_size = _vocab_size(head, hidden[:1, 0])
    outside = (row_targets < 0) | (row_targets >= vocab_size)
    if outside.any():
        raise ValueError(f"counted target id {row_targets[outside][0].item()} is outside the vocabulary "
                         f"[0, {vocab_size}); use ids below vocab_size, or set loss_mask to 0 there")
    return counted, rows, row_targets, max(1, logits_per_chunk // vocab_size)


def _per_example(counted: torch.Tensor, row_values: torch.Tensor) -> torch.Tensor:
    """Values of the counted rows (N,) put back in place, zeros elsewhere, summed per example (B,):
    the order in which sequence_nll sums token_nll."""
    full = torch.zeros(counted.shape, dtype=row_values.dtype, device=row_values.device)
    return full.masked_scatter(counted, row_values).sum(dim=1)


def head_nll_loss(hidden: torch.Tensor, head, targets: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                  normalize: str = "sequence", logits_per_chunk: int = LOGITS_PER_CHUNK) -> torch.Tensor:
    """nll_loss(head(hidden), targets, loss_mask, normalize), the head only where the loss counts."""
    _check_normalize(normalize)
    return _normalized(*head_sequence_nll(hidden, head, targets, loss_mask, logits_per_chunk), normalize)


def _vocab_size(head, row: torch.Tensor) -> int:
    """V of a head: its out_features when it is a linear layer (or LoRA around one), else measured."""
    for module in (head, getattr(head, "base_layer", None)):
        if hasattr(module, "out_features"):
            return module.out_features
    with torch.no_grad():
        return head(row).size(-1)


def _rows_nll(head, rows: torch.Tensor, row_targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(head(rows))[target] per row: (rows,) from torch's fused cross-entropy."""
    return F.cross_entropy(_compute_dtype(head(rows)), row_targets, reduction="none")


def perplexity(mean_token_nll: Union[float, torch.Tensor]) -> Union[float, torch.Tensor]:
    """exp(per-token mean NLL in nats): the size of a uniform choice with the same surprise.

    Pass a normalize="token" loss; the exp of a "sequence" loss is a per-example figure, not a perplexity.
    """
    if isinstance(mean_token_nll, torch.Tensor):
        return mean_token_nll.exp()
    return math.exp(mean_token_nll)


def bits_per_byte(total_nll_nats: Union[float, torch.Tensor], n_bytes: int) -> Union[float, torch.Tensor]:
    """Total NLL of a text in nats, over its length in UTF-8 bytes, in bits: sum(-log2 p) / n_bytes.

    Unlike per-token loss it does not depend on the tokenizer, so models with different
    vocabularies can be compared on the same text.
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}; pass len(text.encode('utf-8'))")
    return total_nll_nats / (n_bytes * math.log(2))


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor,
                   loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fraction of counted positions where the most likely token (argmax, first on ties) is the target."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    counted = _check_mask(targets, loss_mask)
    _check_targets(logits, targets, counted)
    n_counted = counted.sum()
    if n_counted == 0:
        raise ValueError("no position is counted by loss_mask, so accuracy is undefined")
    correct = (logits.argmax(dim=-1) == targets) & counted
    return correct.sum() / n_counted


# ----------------------------------------------------------------------------------------------
# The worked example: python -m minilm.loss


def _worked_example() -> int:
    """Print the loss of two tiny examples step by step and check it four independent ways."""
    torch.manual_seed(0)
    vocab = ["<|endoftext|>", "<|task|>", "<|code|>", "add", "return", "a+b"]
    V = len(vocab)
    # Example 1: <|task|> add <|code|> return a+b <|endoftext|>
    # Example 2: <|task|> add <|code|> a+b <|endoftext|>, right-padded with <|endoftext|>
    sequences = [[1, 3, 2, 4, 5, 0], [1, 3, 2, 5, 0, 0]]
    # The code and the final <|endoftext|> count; the prompt and the padding do not.
    # Shifted by one like the targets: mask[t] says whether targets[t] = ids[t+1] is a code token.
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    ids = torch.tensor(sequences)
    targets = ids[:, 1:]                                                    # (2, 5)
    logits = (2.0 * torch.randn(2, 5, V, dtype=torch.float64)).requires_grad_()  # an untrained model's guess

    print(f"vocabulary (V={V}):", ", ".join(f"{i}={w}" for i, w in enumerate(vocab)))
    z = logits.detach()[0, 2]
    print("\none position step by step (example 1, context <|code|>, target y = 4 'return'):")
    print("  logits z               =", " ".join(f"{v:+.4f}" for v in z.tolist()))
    print("  exp(z - max z)         =", " ".join(f"{v:.4f}" for v in (z - z.max()).exp().tolist()))
    print(f"  logsumexp(z)           = max z + log sum exp(z - max z) = {torch.logsumexp(z, 0).item():+.4f}")
    print("  softmax(z)             =", " ".join(f"{v:.4f}" for v in torch.softmax(z, 0).tolist()))
    print(f"  log P(y) = z_y - logsumexp(z) = {z[4].item():+.4f} - {torch.logsumexp(z, 0).item():+.4f}"
          f" = {(z[4] - torch.logsumexp(z, 0)).item():+.4f}")
    probs = torch.softmax(logits.detach(), dim=-1)
    log_probs = token_log_probs(logits, targets)
    for b in range(2):
        print(f"\nexample {b + 1}: " + " ".join(vocab[i] for i in sequences[b]))
        print("   t  context -> target        counted  P(target)   log P(target)   probabilities")
        for t in range(targets.shape[1]):
            row = " ".join(f"{p:.2f}" for p in probs[b, t].tolist())
            print(f"  {t:2d}  {vocab[ids[b, t]]:>13s} -> {vocab[targets[b, t]]:<13s}  {'yes' if loss_mask[b, t] else 'no ':>3s}"
                  f"     {probs[b, t, targets[b, t]]:.4f}     {log_probs[b, t].item():+9.4f}     [{row}]")
    nll_sum, n_tokens = sequence_nll(logits, targets, loss_mask)
    loss = nll_loss(logits, targets, loss_mask, normalize="sequence")
    print("\nper-example l_i = -sum_j log P over counted tokens:",
          ", ".join(f"{s:.4f} ({n} tokens)" for s, n in zip(nll_sum.tolist(), n_tokens.tolist())))
    print(f"L = (1/N) sum_i l_i = ({' + '.join(f'{s:.4f}' for s in nll_sum.tolist())}) / 2 = {loss.item():.6f}")
    token_loss = nll_loss(logits, targets, loss_mask, normalize="token")
    print(f"per-token mean (normalize='token') = {nll_sum.sum().item():.4f} / {n_tokens.sum().item()} "
          f"= {token_loss.item():.6f},  perplexity = {perplexity(token_loss).item():.3f}")

    # Independent routes to the same number.
    per_token_ce = F.cross_entropy(logits.detach().reshape(-1, V), targets.reshape(-1), reduction="none")
    by_cross_entropy = (per_token_ce.view(2, 5) * loss_mask).sum() / 2
    by_product = -sum(math.log(math.prod(probs[b, t, targets[b, t]].item()
                                         for t in range(5) if loss_mask[b, t])) for b in range(2)) / 2
    loss.backward()
    analytic_grad = (probs - F.one_hot(targets, V)) * loss_mask.unsqueeze(-1) / 2
    print("\ngradient dL/dz at example 1, t=2 (counted), = (softmax(z) - onehot(y)) / N:")
    print("  analytic:", " ".join(f"{g:+.4f}" for g in analytic_grad[0, 2].tolist()))
    print("  autograd:", " ".join(f"{g:+.4f}" for g in logits.grad[0, 2].tolist()))
    print("gradient at example 1, t=0 (prompt, not counted):", " ".join(f"{g:+.1f}" for g in logits.grad[0, 0].tolist()))

    checks = [
        ("explicit == fast path (F.cross_entropy inside nll_loss)",
         abs(loss.item() - nll_loss(logits.detach(), targets, loss_mask, fast=True).item())),
        ("explicit == F.cross_entropy(reduction='none'), masked by hand", abs(loss.item() - by_cross_entropy.item())),
        ("explicit == -(1/N) sum_i log prod_j p_ij", abs(loss.item() - by_product)),
        ("analytic gradient == autograd gradient", (analytic_grad - logits.grad).abs().max().item()),
    ]
    print()
    failed = 0
    for name, difference in checks:
        ok = difference < 1e-9
        failed += not ok
        print(f"check: {name:<62s} max |difference| = {difference:.1e}  {'OK' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_worked_example())
