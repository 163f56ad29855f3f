"""Sampling's two paths agree token for token: kept_fast (the largest logits only) and kept_reference
(a full sort), on random logits with ties, any temperature, top-k and top-p; and the draw is
distributed as the kept tokens' renormalised probabilities."""
import torch
from hypothesis import given, settings, strategies as st

from minilm.generation import sampling
from minilm.generation.sampling import draw, kept_fast, kept_reference, row_log_probs, sample_next


@st.composite
def logits_rows(draw_):
    """A row of logits over 20-300 tokens, often with ties (values from a small set) and -inf."""
    n = draw_(st.integers(20, 300))
    seed = draw_(st.integers(0, 10**6))
    g = torch.Generator().manual_seed(seed)
    if draw_(st.booleans()):  # ties everywhere: few distinct values
        row = torch.randint(0, 6, (n,), generator=g).float()
    else:
        row = torch.randn(n, generator=g) * draw_(st.sampled_from([0.5, 3.0, 20.0]))
    if draw_(st.booleans()):
        row[torch.randint(0, n, (3,), generator=g)] = float("-inf")
    return row


@settings(max_examples=100)
@given(logits_rows(), st.sampled_from([0.2, 0.7, 1.0, 1.5]), st.one_of(st.none(), st.integers(1, 80)),
       st.one_of(st.none(), st.floats(0.05, 1.0)), st.floats(0.0, 0.999999), st.sampled_from([4, 16, 64]))
def test_the_fast_path_keeps_and_draws_what_the_reference_does(row, temperature, top_k, top_p, u, candidates):
    sampling.CANDIDATES, saved = candidates, sampling.CANDIDATES  # small candidate sets reach the fallbacks
    try:
        log_probs = row_log_probs(row, temperature)
        fast, reference = kept_fast(log_probs, top_k, top_p), kept_reference(log_probs, top_k, top_p)
    finally:
        sampling.CANDIDATES = saved
    assert torch.equal(fast, reference)
    uniform = torch.tensor(u)
    assert draw(log_probs, fast, uniform) == draw(log_probs, reference, uniform)


def test_the_reference_keeps_the_definitions():
    """top-k keeps ties with the k-th; top-p the shortest most-likely prefix reaching p."""
    log_probs = torch.log(torch.tensor([0.1, 0.4, 0.1, 0.3, 0.05, 0.05]))
    assert kept_reference(log_probs, 2, None).tolist() == [1, 3]
    assert kept_reference(log_probs, 3, None).tolist() == [0, 1, 2, 3]  # 0 and 2 tie for third
    assert kept_reference(log_probs, None, 0.5).tolist() == [1, 3]  # 0.4 < 0.5, then 0.4 + 0.3 reaches it
    assert kept_reference(log_probs, None, 0.4).tolist() == [1]
    assert kept_reference(log_probs, None, 1.0).tolist() == list(range(6))


def test_draws_follow_the_kept_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(0)
    picks = torch.cat([sample_next(logits, 1.0, top_p=0.85, generator=g) for _ in range(4000)])
    counts = torch.bincount(picks, minlength=4).float() / 4000
    assert counts[3] == 0  # outside the nucleus {0, 1, 2}
    expected = torch.tensor([0.5, 0.2, 0.2]) / 0.9
    assert (counts[:3] - expected).abs().max() < 0.03  # 4000 draws: about 4 standard errors


def test_a_row_s_token_does_not_depend_on_the_other_rows():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    together = sample_next(logits, 0.7, top_p=0.95, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    uniforms = torch.rand(5, generator=g)
    alone = [draw(row_log_probs(row, 0.7), kept_fast(row_log_probs(row, 0.7), None, 0.95), u)
             for row, u in zip(logits, uniforms)]
    assert together.tolist() == [int(t) for t in alone]
    assert torch.equal(sample_next(logits, 0.7, top_p=0.95, generator=torch.Generator().manual_seed(3), reference=True),
                       together)


def test_a_nucleus_that_ends_within_rounding_of_top_p_is_cut_alike():
    # found by the property above when run alone: the reference renormalised the whole row with a
    # softmax, the fast path used the row's own probabilities, and at top_p 0.999999 their sums
    # rounded to opposite sides of it (the reference kept token 4, the fast path did not)
    row = torch.tensor([-4.5768, -2.2507, -1.9619, -4.8285, 2.5971, 0.7332, -1.9887, 2.4219, 1.3174, 3.5136,
                        5.3023, -0.2861, 0.1835, -1.8532, -2.3942, -0.3949, -2.3953, 1.0072, 0.8260, 5.1489])
    sampling.CANDIDATES, saved = 4, sampling.CANDIDATES
    try:
        log_probs = row_log_probs(row, 0.2)
        assert torch.equal(kept_fast(log_probs, None, 0.999999), kept_reference(log_probs, None, 0.999999))
    finally:
        sampling.CANDIDATES = saved
