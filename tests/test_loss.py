"""Properties of the loss (minilm/loss.py): each formula of docs/loss.md checked against its math.

Random shapes, vocabularies, logits and masks come from hypothesis; brute-force references are
written out in float64 with Python loops so they share no code with the module under test.
"""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from minilm.loss import (bits_per_byte, head_nll_loss, head_sequence_nll, head_sequence_stats, nll_loss,
                         perplexity,
                         sequence_nll, token_accuracy, token_log_probs, token_nll)

NORMALIZE = st.sampled_from(["sequence", "token"])


@st.composite
def cases(draw, max_batch=3, max_time=5, max_vocab=11, scale=None, dtype=torch.float64,
          every_row_counted=False):
    """A random (logits, targets, loss_mask) with at least one counted position."""
    batch = draw(st.integers(1, max_batch))
    time = draw(st.integers(1, max_time))
    vocab = draw(st.integers(2, max_vocab))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0])) if scale is None else scale
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, time, vocab, generator=generator, dtype=dtype)
    targets = torch.tensor(draw(st.lists(st.integers(0, vocab - 1), min_size=batch * time,
                                         max_size=batch * time))).view(batch, time)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * time,
                                      max_size=batch * time))).view(batch, time)
    if every_row_counted:
        mask[:, 0] = True
    elif not mask.any():
        mask[draw(st.integers(0, batch - 1)), draw(st.integers(0, time - 1))] = True
    return logits, targets, mask


def loss_and_grad(logits, targets, mask, normalize, fast=False):
    logits = logits.detach().clone().requires_grad_()
    loss = nll_loss(logits, targets, mask, normalize=normalize, fast=fast)
    loss.backward()
    return loss.detach(), logits.grad


def brute_force_loss(logits, targets, mask, normalize):
    """-(1/N) sum_i log prod_j p_ij, with p from exp(z_y) / sum_v exp(z_v) term by term (float64)."""
    example_nlls, n_tokens = [], 0
    for b in range(logits.shape[0]):
        product, counted = 1.0, 0
        for t in range(logits.shape[1]):
            if mask[b, t]:
                z = logits[b, t].tolist()
                product *= math.exp(z[targets[b, t]]) / sum(math.exp(v) for v in z)
                counted += 1
        if counted:
            example_nlls.append(-math.log(product))
            n_tokens += counted
    return sum(example_nlls) / (len(example_nlls) if normalize == "sequence" else n_tokens)


# -- the two paths ------------------------------------------------------------------------------

@given(cases(dtype=torch.float32), NORMALIZE)
def test_explicit_path_equals_fast_path(case, normalize):
    logits, targets, mask = case
    loss, grad = loss_and_grad(logits, targets, mask, normalize)
    fast_loss, fast_grad = loss_and_grad(logits, targets, mask, normalize, fast=True)
    torch.testing.assert_close(loss, fast_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, fast_grad, atol=1e-5, rtol=1e-5)


@given(cases(dtype=torch.float32, scale=1.0), NORMALIZE, st.sampled_from([1e3, 1e4]))
def test_extreme_logits_stay_finite_and_paths_agree(case, normalize, magnitude):
    logits, targets, mask = case
    logits = magnitude * logits.sign()                                      # every logit is +-1e4
    loss, grad = loss_and_grad(logits, targets, mask, normalize)
    fast_loss, _ = loss_and_grad(logits, targets, mask, normalize, fast=True)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # Losses here reach ~2e4, where fp32 steps are ~2e-3: compare relatively.
    torch.testing.assert_close(loss, fast_loss, atol=1e-5, rtol=1e-6)


def test_no_mask_token_loss_is_nanogpt_cross_entropy():
    logits = torch.randn(2, 7, 13, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = F.cross_entropy(logits.view(-1, 13), targets.view(-1))
    torch.testing.assert_close(nll_loss(logits, targets, normalize="token"), expected)
    all_ones = torch.ones(2, 7, dtype=torch.long)
    torch.testing.assert_close(nll_loss(logits, targets), nll_loss(logits, targets, all_ones))


# -- the formula --------------------------------------------------------------------------------

@given(cases())
def test_token_log_probs_is_log_softmax_at_target(case):
    logits, targets, _ = case
    expected = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_log_probs(logits, targets), expected, atol=1e-12, rtol=1e-12)


@given(cases(), NORMALIZE)
def test_loss_is_minus_log_product_of_probabilities(case, normalize):
    logits, targets, mask = case
    expected = brute_force_loss(logits, targets, mask, normalize)
    assert nll_loss(logits, targets, mask, normalize=normalize).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@given(cases(), NORMALIZE, st.booleans())
def test_gradient_is_softmax_minus_onehot(case, normalize, fast):
    logits, targets, mask = case
    _, grad = loss_and_grad(logits, targets, mask, normalize, fast=fast)
    n_tokens = mask.sum(dim=1)
    normalizer = (n_tokens > 0).sum() if normalize == "sequence" else n_tokens.sum()
    onehot = F.one_hot(targets, logits.shape[-1])
    expected = (torch.softmax(logits, dim=-1) - onehot) * mask.unsqueeze(-1) / normalizer
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=1e-10)


# -- invariances --------------------------------------------------------------------------------

@given(cases(), NORMALIZE, st.integers(0, 2**31 - 1))
def test_adding_a_constant_per_position_changes_nothing(case, normalize, seed):
    logits, targets, mask = case
    shift = 100 * torch.randn(*logits.shape[:-1], 1, generator=torch.Generator().manual_seed(seed),
                              dtype=logits.dtype)                          # one constant per position
    loss, grad = loss_and_grad(logits, targets, mask, normalize)
    shifted_loss, shifted_grad = loss_and_grad(logits + shift, targets, mask, normalize)
    torch.testing.assert_close(loss, shifted_loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, shifted_grad, atol=1e-10, rtol=1e-10)


@given(cases(), NORMALIZE, st.booleans(), st.integers(0, 2**31 - 1))
def test_masked_positions_change_neither_loss_nor_gradient(case, normalize, fast, seed):
    logits, targets, mask = case
    generator = torch.Generator().manual_seed(seed)
    noise = 1e3 * torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
    other_logits = torch.where(mask.unsqueeze(-1), logits, noise)
    # Padding ids like -1 or ids past the vocabulary are allowed where the mask is 0.
    junk = torch.randint(-5, logits.shape[-1] + 5, targets.shape, generator=generator)
    other_targets = torch.where(mask, targets, junk)
    loss, grad = loss_and_grad(logits, targets, mask, normalize, fast=fast)
    other_loss, other_grad = loss_and_grad(other_logits, other_targets, mask, normalize, fast=fast)
    assert torch.equal(loss, other_loss)
    assert torch.equal(grad, other_grad)
    assert torch.all(grad[~mask] == 0)


@given(cases(), NORMALIZE)
def test_uniform_logits_cost_log_vocab_per_token_and_loss_is_never_negative(case, normalize):
    logits, targets, mask = case
    vocab = logits.shape[-1]
    assert nll_loss(logits, targets, mask, normalize=normalize) >= 0
    uniform = torch.full_like(logits, 3.7)
    nll_sum, n_tokens = sequence_nll(uniform, targets, mask)
    torch.testing.assert_close(nll_sum, n_tokens * math.log(vocab), check_dtype=False)
    if normalize == "token":
        assert nll_loss(uniform, targets, mask, normalize="token").item() == pytest.approx(math.log(vocab))
    assert perplexity(nll_loss(uniform, targets, mask, normalize="token")).item() == pytest.approx(vocab)


@given(cases(max_time=6, every_row_counted=True), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_sequence_is_count_times_token_when_all_examples_count_equally(case, count, seed):
    logits, targets, _ = case
    batch, time, _ = logits.shape
    count = min(count, time)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, time, dtype=torch.bool)
    for b in range(batch):                                                  # `count` random positions per row
        mask[b, torch.randperm(time, generator=generator)[:count]] = True
    per_sequence = nll_loss(logits, targets, mask, normalize="sequence")
    per_token = nll_loss(logits, targets, mask, normalize="token")
    torch.testing.assert_close(per_sequence, count * per_token)


@given(cases(every_row_counted=True))
def test_within_one_batch_sequence_is_mean_length_times_token(case):
    logits, targets, mask = case
    mean_length = mask.sum() / mask.shape[0]
    torch.testing.assert_close(nll_loss(logits, targets, mask, "sequence"),
                               mean_length * nll_loss(logits, targets, mask, "token"))


def test_across_batches_token_weights_short_examples_more():
    """Two equal-size batches, short code then long code. Averaging per-batch losses, as SGD does,
    reproduces the full-data "sequence" loss exactly, but not the full-data "token" loss: "token"
    divides each batch by its own token count, so a token in the short batch weighs 4x more."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, 7, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 7, (4, 8), generator=generator)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:2, :2] = True                                                     # batch 1: 2 code tokens each
    mask[2:, :] = True                                                      # batch 2: 8 code tokens each
    for normalize in ("sequence", "token"):
        full = nll_loss(logits, targets, mask, normalize)
        batch_mean = (nll_loss(logits[:2], targets[:2], mask[:2], normalize)
                      + nll_loss(logits[2:], targets[2:], mask[2:], normalize)) / 2
        if normalize == "sequence":
            torch.testing.assert_close(batch_mean, full)
        else:
            assert not torch.isclose(batch_mean, full)
    # The gradient says the same: per-token weight 1/(2*2) in the short batch, 1/(2*8) in the long one.
    short = logits[:2].clone().requires_grad_()
    nll_loss(short, targets[:2], mask[:2], "token").backward()
    long_ = logits[2:].clone().requires_grad_()
    nll_loss(long_, targets[2:], mask[2:], "token").backward()
    onehot = F.one_hot(targets, 7)
    torch.testing.assert_close(short.grad[mask[:2]], (torch.softmax(logits[:2], -1) - onehot[:2])[mask[:2]] / 4)
    torch.testing.assert_close(long_.grad[mask[2:]], (torch.softmax(logits[2:], -1) - onehot[2:])[mask[2:]] / 16)


# -- evaluation helpers -------------------------------------------------------------------------

@given(cases(max_batch=4, every_row_counted=True), st.integers(1, 3))
def test_sequence_nll_aggregates_exactly_across_batches(case, split):
    logits, targets, mask = case
    split = min(split, logits.shape[0])
    nll_sum, n_tokens = sequence_nll(logits, targets, mask)
    first = sequence_nll(logits[:split], targets[:split], mask[:split])
    rest = sequence_nll(logits[split:], targets[split:], mask[split:])
    torch.testing.assert_close(torch.cat([first[0], rest[0]]), nll_sum)
    assert torch.equal(torch.cat([first[1], rest[1]]), n_tokens)
    torch.testing.assert_close(nll_sum.sum() / len(nll_sum), nll_loss(logits, targets, mask, "sequence"))
    torch.testing.assert_close(nll_sum.sum() / n_tokens.sum(), nll_loss(logits, targets, mask, "token"))


def test_token_nll_is_zero_outside_the_mask():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 2, -1], [0, -1, -1]])
    mask = targets >= 0
    nll = token_nll(logits, targets, mask)
    assert torch.all(nll[~mask] == 0) and torch.all(nll[mask] > 0)


def test_bits_per_byte_of_a_uniform_byte_model_is_eight():
    # A byte-level model (one token per byte, 256 tokens) that knows nothing pays log2(256) = 8 bits a byte.
    text = "def add(a, b):\n    return a + b\n".encode("utf-8")
    targets = torch.tensor([list(text)])
    nll_sum, _ = sequence_nll(torch.zeros(1, len(text), 256), targets)
    assert bits_per_byte(nll_sum.sum(), len(text)).item() == pytest.approx(8.0)
    assert bits_per_byte(math.log(2) * 12, 3) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 0)


@given(cases())
def test_token_accuracy_counts_argmax_hits(case):
    logits, targets, mask = case
    hits = sum(int(logits[b, t].argmax() == targets[b, t]) for b, t in mask.nonzero().tolist())
    assert token_accuracy(logits, targets, mask).item() == pytest.approx(hits / mask.sum().item())
    confident = 10 * F.one_hot(targets, logits.shape[-1]).double()
    assert token_accuracy(confident, targets, mask).item() == 1.0


# -- precision ----------------------------------------------------------------------------------

@given(cases(dtype=torch.float32), NORMALIZE, st.booleans())
def test_bf16_logits_are_computed_in_fp32(case, normalize, fast):
    logits, targets, mask = case
    low = logits.bfloat16().requires_grad_()
    loss = nll_loss(low, targets, mask, normalize=normalize, fast=fast)
    loss.backward()
    assert loss.dtype == torch.float32 and low.grad.dtype == torch.bfloat16
    # Same bf16 values, upcast before the loss: the same fp32 computation, the same number.
    expected = nll_loss(low.detach().float(), targets, mask, normalize=normalize, fast=fast)
    torch.testing.assert_close(loss, expected, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", ["sequence", "token"])
def test_fused_cuda_path_matches_cpu_reference(dtype, normalize):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 64, 1000, generator=generator)).to(dtype)
    targets = torch.randint(0, 1000, (4, 64), generator=generator)
    mask = torch.rand(4, 64, generator=generator) > 0.3
    reference = nll_loss(logits, targets, mask, normalize=normalize)       # explicit path, CPU
    for fast in (False, True):
        got = nll_loss(logits.cuda(), targets.cuda(), mask.cuda(), normalize=normalize, fast=fast)
        torch.testing.assert_close(got.cpu(), reference, atol=1e-4, rtol=1e-5)


# -- degenerate input ---------------------------------------------------------------------------

@given(cases(), NORMALIZE)
def test_an_example_with_no_counted_token_is_left_out(case, normalize):
    logits, targets, mask = case
    padded_logits = torch.cat([logits, torch.randn_like(logits[:1])])
    padded_targets = torch.cat([targets, targets[:1]])
    padded_mask = torch.cat([mask, torch.zeros_like(mask[:1])])
    loss = nll_loss(logits, targets, mask, normalize=normalize)
    torch.testing.assert_close(nll_loss(padded_logits, padded_targets, padded_mask, normalize=normalize), loss)


@pytest.mark.parametrize("fast", [False, True])
def test_bad_input_raises_a_clear_error(fast):
    logits = torch.randn(2, 3, 5)
    targets = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="no position is counted"):
        nll_loss(logits, targets, torch.zeros(2, 3), fast=fast)
    with pytest.raises(ValueError, match="targets shape"):
        nll_loss(logits, targets[:, :2], fast=fast)
    with pytest.raises(ValueError, match="loss_mask shape"):
        nll_loss(logits, targets, torch.ones(2, 2), fast=fast)
    with pytest.raises(ValueError, match=r"target id 5 at position \(1, 2\) is outside the vocabulary \[0, 5\)"):
        nll_loss(logits, torch.tensor([[0, 1, 2], [3, 4, 5]]), fast=fast)
    with pytest.raises(ValueError, match="target id -1"):
        nll_loss(logits, torch.tensor([[0, 1, 2], [3, 4, -1]]), fast=fast)
    with pytest.raises(TypeError, match="integer token ids"):
        nll_loss(logits, targets.float(), fast=fast)
    with pytest.raises(TypeError, match="floating-point"):
        nll_loss(targets.unsqueeze(-1).expand(2, 3, 5), targets, fast=fast)
    with pytest.raises(ValueError, match="only 0 and 1"):
        nll_loss(logits, targets, torch.full((2, 3), 0.5), fast=fast)
    with pytest.raises(ValueError, match="normalize must be one of"):
        nll_loss(logits, targets, normalize="mean", fast=fast)
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\)"):
        nll_loss(logits[0], targets[0], fast=fast)
    with pytest.raises(ValueError, match="target id 7"):
        token_log_probs(logits, torch.full((2, 3), 7))


# -- the LM head only where the loss counts ------------------------------------------------------

@st.composite
def head_cases(draw):
    """hidden (B, T, C) and a linear head C -> V in float64, targets, a mask that may leave whole
    rows uncounted (at least one counted position overall), and a chunk size from one row up."""
    batch, time, channels, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), \
        draw(st.integers(2, 13))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    hidden = torch.randn(batch, time, channels, generator=generator, dtype=torch.float64)
    head = torch.nn.Linear(channels, vocab, bias=draw(st.booleans())).double()
    with torch.no_grad():
        head.weight.copy_(3 * torch.randn(vocab, channels, generator=generator, dtype=torch.float64))
    targets = torch.randint(0, vocab, (batch, time), generator=generator)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * time, max_size=batch * time))).view(batch, time)
    if not mask.any():
        mask[draw(st.integers(0, batch - 1)), draw(st.integers(0, time - 1))] = True
    rows_per_chunk = draw(st.sampled_from([1, 2, 3, 1000]))
    return hidden, head, targets, mask, rows_per_chunk * vocab


@given(head_cases(), NORMALIZE)
def test_head_only_where_counted_equals_the_written_out_objective_value_and_gradient(case, normalize):
    """Gathering the counted rows, the head in chunks (recomputed in backward when there are several),
    then cross-entropy: the same loss and gradients (to hidden and to the head) as the explicit path
    over all logits."""
    hidden, head, targets, mask, logits_per_chunk = case
    results = []
    for loss_fn in (lambda h: nll_loss(head(h), targets, mask, normalize=normalize),
                    lambda h: head_nll_loss(h, head, targets, mask, normalize, logits_per_chunk)):
        head.zero_grad()
        h = hidden.clone().requires_grad_()
        loss = loss_fn(h)
        loss.backward()
        results.append((loss.detach(), h.grad, head.weight.grad.clone()))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    nll_sum, n_tokens = head_sequence_nll(hidden, head, targets, mask, logits_per_chunk)
    expected_sum, expected_tokens = sequence_nll(head(hidden), targets, mask)
    torch.testing.assert_close(nll_sum, expected_sum.detach(), rtol=1e-10, atol=1e-12)
    assert torch.equal(n_tokens, expected_tokens)


@given(head_cases())
def test_head_sequence_stats_are_the_full_logits_numbers_of_evaluation(case):
    """Evaluation's per-example NLL (written-out path), counted tokens and argmax hits, from the
    counted rows only, equal what full logits give."""
    hidden, head, targets, mask, logits_per_chunk = case
    nll_sum, n_tokens, correct = head_sequence_stats(hidden, head, targets, mask, logits_per_chunk)
    with torch.no_grad():
        logits = head(hidden)
    expected_sum, expected_tokens = sequence_nll(logits, targets, mask)
    torch.testing.assert_close(nll_sum, expected_sum, rtol=1e-12, atol=1e-12)
    assert torch.equal(n_tokens, expected_tokens)
    assert torch.equal(correct, ((logits.argmax(-1) == targets) & mask).sum(dim=1))


def test_head_sequence_nll_computes_logits_for_counted_rows_only_and_a_batch_without_any_still_backpropagates():
    hidden = torch.randn(3, 5, 4, requires_grad=True)
    head = torch.nn.Linear(4, 7, bias=False)
    rows_seen = []
    head.register_forward_hook(lambda module, inputs, output: rows_seen.append(inputs[0].size(0)))
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 1:3] = mask[2, 4] = True
    head_sequence_nll(hidden, head, torch.zeros(3, 5, dtype=torch.long), mask, logits_per_chunk=2 * 7)
    assert rows_seen == [2, 1]  # 3 counted rows in chunks of 2: never the 12 uncounted ones
    nll_sum, n_tokens = head_sequence_nll(hidden, head, torch.full((3, 5), -1), torch.zeros(3, 5))
    nll_sum.sum().backward()  # a micro-batch with nothing to learn adds zero gradient, not an error
    assert nll_sum.tolist() == [0.0] * 3 and n_tokens.tolist() == [0] * 3
    assert hidden.grad.abs().sum() == 0 and head.weight.grad.abs().sum() == 0


def test_head_loss_bad_input_raises_a_clear_error():
    hidden, head = torch.randn(2, 3, 4), torch.nn.Linear(4, 5)
    targets = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"hidden must be \(B, T, C\)"):
        head_sequence_nll(hidden[0], head, targets)
    with pytest.raises(ValueError, match=r"counted target id 5 is outside the vocabulary \[0, 5\)"):
        head_sequence_nll(hidden, head, torch.tensor([[0, 1, 2], [3, 4, 5]]))
    with pytest.raises(ValueError, match="no position is counted"):
        head_nll_loss(hidden, head, targets, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="normalize must be one of"):
        head_nll_loss(hidden, head, targets, normalize="mean")


# -- the worked example -------------------------------------------------------------------------

def test_worked_example_runs_and_its_checks_pass():
    result = subprocess.run([sys.executable, "-m", "minilm.loss"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    checks = [line for line in result.stdout.splitlines() if line.startswith("check:")]
    assert len(checks) == 4 and all(line.endswith("OK") for line in checks), result.stdout
    assert "F.cross_entropy" in result.stdout and "log prod_j p_ij" in result.stdout
    assert "autograd" in result.stdout
