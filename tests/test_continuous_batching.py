"""Continuous batching: a pool that refills as rows finish computes what each row computes alone."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minilm.config import ModelConfig
from minilm.generation.completions import generate_from_prompts
from minilm.generation.continuous_batching import PoolCache, fits_pool, generate_pooled
from minilm.model.gpt import GPT
from minilm.model.kv_cache import KVCache, shared_prefix_length
from minilm.seeds import sampling_seed

LLAMA = dict(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, position="rope",
             norm="rmsnorm", mlp="swiglu", bias=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(**LLAMA)).eval()


def prompts_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, LLAMA["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def before_stop(ids, stop_ids):
    return ids[:next((j for j, t in enumerate(ids) if t in stop_ids), len(ids))]


def alone(model, prompt, max_new_tokens, stop_ids, stop_when=None, index=0):
    """One prompt, no batch: GPT.generate's new ids before the stop id that ended them."""
    out = model.generate(torch.tensor(prompt)[None], max_new_tokens, temperature=0.0, stop_tokens=stop_ids,
                         stop_when=None if stop_when is None else lambda _, ids: stop_when(index, ids))
    return before_stop(out[0, len(prompt):].tolist(), stop_ids)


def test_placed_rows_continue_as_alone(model):
    """Rows prefilled apart (different lengths, each batch left-padded), placed into one cache at
    different steps, moved right and left (realign), then decoded one step together: each row's
    logits equal those of its prompt alone, without a cache."""
    prompts = prompts_of([3, 9, 5, 12])
    prefills = []
    for group in (prompts[:2], prompts[2:]):
        width = max(map(len, group))
        idx = torch.zeros(len(group), width, dtype=torch.long)
        real = torch.zeros(len(group), width, dtype=torch.bool)
        for r, p in enumerate(group):
            idx[r, width - len(p):], real[r, width - len(p):] = torch.tensor(p), True
        cache = KVCache(model.config, len(group), "cpu", torch.float32, width)
        model(idx, cache, real)
        prefills.append(cache)
    pool = PoolCache(model.config, 4, "cpu", torch.float32, 30)
    pool.realign(0, 9)
    pool.place(torch.tensor([3, 1]), prefills[0])  # prompts 0 and 1 in rows 3 and 1
    model(torch.tensor([[1], [7], [1], [6]]), pool)  # one step: rows 3 and 1 read 6 and 7
    with pytest.raises(ValueError, match="realign first"):
        pool.place(torch.tensor([0, 2]), prefills[1])  # 12 columns, 10 so far
    pool.realign(int(pool.first_token_column()[[1, 3]].min()), 14)  # right, so that prompts 2 and 3 fit
    pool.place(torch.tensor([0, 2]), prefills[1])
    assert pool.length == 14 and pool.first_token_column().tolist() == [9, 4, 2, 10]
    pool.realign(2, 12)  # left: the columns every row pads
    assert pool.first_token_column().tolist() == [7, 2, 0, 8]
    step = torch.tensor([[10], [11], [12], [13]])
    got = model(step, pool)[:, -1]
    seen = {3: prompts[0] + [6], 1: prompts[1] + [7], 0: prompts[2], 2: prompts[3]}
    expected = torch.stack([model(torch.tensor([seen[r] + step[r].tolist()]))[0, -1] for r in range(4)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@given(lengths=st.lists(st.integers(1, 20), min_size=1, max_size=9), pool_size=st.integers(1, 5),
       max_new_tokens=st.integers(1, 12), seed=st.integers(0, 100))
def test_greedy_pool_equals_one_prompt_at_a_time(model, lengths, pool_size, max_new_tokens, seed):
    """Rows stop at different steps (a stop id, stop_when, the cap), so the pool refills mid-way."""
    prompts = prompts_of(lengths, seed)
    stop_ids = [seed % 7 + 3, 11]
    stop_when = lambda i, ids: len(ids) >= 1 + (i * 5 + seed) % 9  # noqa: E731
    done = []
    got = generate_pooled(model, prompts, max_new_tokens, stop_ids, pool_size=pool_size,
                          stop_when=stop_when, on_prompt_done=done.append)
    assert sorted(done) == list(range(len(prompts)))
    for i, prompt in enumerate(prompts):
        [ids] = got[i]
        assert ids[-1] in stop_ids or len(ids) == max_new_tokens
        assert before_stop(ids, stop_ids) == alone(model, prompt, max_new_tokens, stop_ids, stop_when, i)


def test_sampled_rows_do_not_depend_on_the_pool():
    """Each row draws from its own generator (sampling_seed): pools of 1 and 4 sample the same tokens."""
    torch.manual_seed(1)
    model = GPT(ModelConfig(**LLAMA)).double().eval()  # float64: batching changes no rounding that matters
    prompts = prompts_of([4, 11, 2, 7, 9])
    runs = [generate_pooled(model, prompts, 10, [5], pool_size=size, n_samples=3, temperature=1.0, top_k=20,
                            seed=3) for size in (1, 4)]
    assert runs[0] == runs[1]
    assert any(len({tuple(s) for s in samples}) > 1 for samples in runs[0])  # the samples differ
    other_seed = generate_pooled(model, prompts, 10, [5], pool_size=4, n_samples=3, temperature=1.0, top_k=20,
                                 seed=4)
    assert other_seed != runs[0]
    assert len({sampling_seed(3, i, s) for i in range(50) for s in range(10)}) == 500


def test_evaluation_pools_what_fits_and_batches_the_rest(model):
    """generate_from_prompts: the pool (continuous=True) and fixed batches give the same answers;
    prompts whose answer could outgrow the context go in fixed batches, and too long ones get None."""
    prompts = prompts_of([5, 14, 40, 3, 8, 45, 60])
    block = LLAMA["block_size"]
    assert [fits_pool(len(p), 6, block) for p in prompts] == [True, True, True, True, True, False, False]

    def run(continuous):
        return generate_from_prompts(model, prompts, [5, 6], lambda ids: str(ids), max_new_tokens=6,
                                     batch_size=3, continuous=continuous)
    pooled = run(True)
    assert pooled == run(False)
    assert pooled[-1] is None and pooled[5] is not None


def test_refuses_what_it_cannot_pool(model):
    with pytest.raises(ValueError, match="does not fit the context"):
        generate_pooled(model, prompts_of([40]), 10, [5])
    with pytest.raises(ValueError, match="needs stop_ids"):
        generate_pooled(model, prompts_of([4]), 10, [])
    learned = GPT(ModelConfig(vocab_size=61, block_size=48, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(ValueError, match="rotary"):
        generate_pooled(learned, prompts_of([4]), 10, [5])


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=6))
def test_shared_prefix_is_the_longest_that_leaves_every_prompt_a_token(prompts):
    n = shared_prefix_length(prompts)
    if len(prompts) == 1:  # one row shares nothing (as in training)
        assert n == 0
        return
    prefix = prompts[0][:n]
    assert all(p[:n] == prefix and len(p) > n for p in prompts)
    longer = n + 1  # one more token would break one of the two conditions
    assert any(len(p) <= longer or p[:longer] != prompts[0][:longer] for p in prompts)


def test_a_shared_system_turn_is_computed_once_and_changes_no_answer(model):
    """Chat prompts start with the same system turn: computed once and copied to each row, the
    rest of each prompt after it (left-padded), the answers equal one prompt at a time."""
    system = prompts_of([9], seed=7)[0]
    prompts = [system + rest for rest in prompts_of([1, 6, 3, 10, 4], seed=8)]
    assert prompts[0][:shared_prefix_length(prompts)] == system
    stop_ids = [5]
    shared = generate_pooled(model, prompts, 8, stop_ids, pool_size=3)
    assert shared == generate_pooled(model, prompts, 8, stop_ids, pool_size=3, share_prefix=False)
    for prompt, [ids] in zip(prompts, shared):
        assert before_stop(ids, stop_ids) == alone(model, prompt, 8, stop_ids)
