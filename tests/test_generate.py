"""Generation from the decoder: the KV cache changes no greedy token, sampling is reproducible from
its seed and stays inside top-k / top-p, a left-padded batch generates what each prompt generates
alone, finished rows leave the batch, and the cache is sized to the tokens a call needs."""
import pytest
import torch
from hypothesis import given, strategies as st

from minilm.generation.sampling import sample_next
import minilm.generation.decode
from model_helpers import LLAMA, make_model


FAMILIES = {"learned": dict(position="learned"), "rope": dict(position="rope"), "llama": LLAMA}


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
@given(family=st.sampled_from(sorted(FAMILIES)), seed=st.integers(0, 1000), prompt_len=st.integers(1, 10),
       new=st.integers(1, 40))
def test_greedy_generation_with_cache_equals_recompute(attention, family, seed, prompt_len, new):
    """Including past the context (32): both then fall back to the last block_size tokens."""
    model = make_model(seed, attention, **FAMILIES[family])
    idx = torch.randint(0, 97, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
    with_cache = model.generate(idx, new, temperature=0, use_cache=True)
    without = model.generate(idx, new, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (2, prompt_len + new)


def test_sampling_is_reproducible_from_seed_and_stops_on_stop_tokens():
    model = make_model(1)
    idx = torch.zeros(3, 2, dtype=torch.long)
    a = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    b = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    assert torch.equal(a, b)
    stop = int(a[0, 2])  # the first sampled token of row 0 becomes a stop token
    out = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7, stop_tokens=[stop])
    assert out[0, 2] == stop and (out[0, 2:] == stop).all()  # finished rows are padded with it


@given(st.integers(1, 20), st.floats(0.05, 0.95), st.integers(0, 100))
def test_top_k_and_top_p_only_sample_allowed_tokens(k, p, seed):
    logits = torch.randn(4, 20, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    picks = torch.stack([sample_next(logits, 1.0, top_k=k, generator=g) for _ in range(30)], dim=1)
    allowed = torch.topk(logits, k, dim=-1).indices
    assert all(set(picks[i].tolist()) <= set(allowed[i].tolist()) for i in range(4))
    picks = torch.stack([sample_next(logits, 1.0, top_p=p, generator=g) for _ in range(30)], dim=1)
    probs = torch.softmax(logits, -1)
    for i in range(4):
        sorted_probs, order = probs[i].sort(descending=True)
        keep = int(((sorted_probs.cumsum(0) - sorted_probs) < p).sum())  # smallest set reaching p
        assert set(picks[i].tolist()) <= set(order[:keep].tolist())


def test_prompt_longer_than_context_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="prompt has 33 tokens but the context holds 32"):
        model.generate(torch.zeros(1, 33, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 1)


PADDED_FAMILIES = {"rope": dict(position="rope"), "llama": LLAMA}


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
@given(family=st.sampled_from(sorted(PADDED_FAMILIES)), seed=st.integers(0, 1000),
       lengths=st.lists(st.integers(1, 12), min_size=2, max_size=4), new=st.integers(1, 30))
def test_left_padded_batch_generates_what_each_prompt_generates_alone(attention, family, seed, lengths, new):
    """Greedy, with the KV cache; up to 42 tokens, so past the context (32) too, where a row sees
    its last block_size real tokens, batched or alone."""
    model = make_model(seed, attention, **PADDED_FAMILIES[family])
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 97, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    idx = torch.full((len(prompts), width), 7)  # any id: the mask hides it
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    together = model.generate(idx, new, temperature=0, attention_mask=mask)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], new, temperature=0)[0, len(prompt):]
        assert torch.equal(together[row], alone), f"row {row} of lengths {lengths}"


@given(seed=st.integers(0, 1000), lengths=st.lists(st.integers(1, 12), min_size=2, max_size=5))
def test_rows_that_stop_leave_the_batch_and_the_others_go_on_as_alone(seed, lengths):
    """A third of the vocabulary stops a row, so rows finish at different steps and drop out of
    the batch; each row still produces what it produces alone, then repeats its stop token."""
    model = make_model(seed, "sdpa", **LLAMA)
    stops = list(range(0, 97, 3))
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 97, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    together = model.generate(idx, 20, temperature=0, stop_tokens=stops, attention_mask=mask)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], 20, temperature=0, stop_tokens=stops)[0, len(prompt):]
        assert torch.equal(together[row, :len(alone)], alone)
        rest = together[row, len(alone):]  # after its stop token, while other rows go on
        assert rest.numel() == 0 or (alone[-1].item() in stops and (rest == alone[-1]).all())


@given(seed=st.integers(0, 1000), ends=st.lists(st.integers(1, 12), min_size=2, max_size=4))
def test_stop_when_ends_a_row_where_the_rule_says_and_pads_it_with_a_stop_token(seed, ends):
    """Row r's rule says stop after ends[r] new tokens: that row is what it is without the rule up
    to there, then the first stop token; a row its stop tokens end first is unchanged."""
    model = make_model(seed, "sdpa", **LLAMA)
    stops = [5, 50]
    idx = torch.randint(0, 97, (len(ends), 4), generator=torch.Generator().manual_seed(seed))
    free = model.generate(idx, 16, temperature=0, stop_tokens=stops)[:, 4:]
    ruled = model.generate(idx, 16, temperature=0, stop_tokens=stops,
                           stop_when=lambda row, ids: len(ids) == ends[row])[:, 4:]
    for row, end in enumerate(ends):
        stopped_by_token = [i for i, t in enumerate(free[row].tolist()) if t in stops]
        if stopped_by_token and stopped_by_token[0] < end:
            assert torch.equal(ruled[row, :stopped_by_token[0] + 1], free[row, :stopped_by_token[0] + 1])
        else:
            assert torch.equal(ruled[row, :end], free[row, :end])
            assert (ruled[row, end:] == stops[0]).all()


def test_padding_must_be_on_the_left():
    model = make_model(0, position="rope")
    with pytest.raises(ValueError, match="pad prompts on the left"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 2, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 2))


def test_generation_sizes_the_cache_to_the_tokens_it_needs(monkeypatch):
    sizes = []
    original = minilm.generation.decode.KVCache
    monkeypatch.setattr(minilm.generation.decode, "KVCache", lambda *args: sizes.append(args[-1]) or original(*args))
    model = make_model(**LLAMA)  # block_size 32
    prompt = torch.zeros(2, 5, dtype=torch.long)
    model.generate(prompt, 7, temperature=0)
    model.generate(prompt, 40, temperature=0)  # past the context: capped, then recomputed as before
    assert sizes == [5 + 7, 32]
