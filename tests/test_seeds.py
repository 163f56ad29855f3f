"""Every random stream of a run draws numbers of its own (minilm/seeds.py)."""
import torch
from hypothesis import given
from hypothesis import strategies as st

from minilm import seeds

counts = st.integers(0, 10**6)


@given(counts, counts, st.integers(0, 64))
def test_the_streams_of_one_micro_batch_have_distinct_seeds(seed, step, micro):
    streams = [seeds.batch_seed(seed, step, micro), seeds.data_mix_seed(seed, step, micro),
               seeds.length_group_seed(seed, step, micro), seeds.dropout_seed(seed, step, micro),
               seeds.sampling_seed(seed, step, micro)]
    assert len(set(streams)) == len(streams)
    assert all(0 <= s < 2**63 for s in streams)


@given(counts, counts, st.integers(0, 64))
def test_dropout_does_not_replay_the_data_mix_coin(seed, step, micro):
    """They once shared (seed, step, micro, 1): the coin that picks a pretraining batch's source and
    the dropout masks of that micro-batch were the same random numbers."""
    coin = torch.rand(8, generator=torch.Generator().manual_seed(seeds.data_mix_seed(seed, step, micro)))
    torch.manual_seed(seeds.dropout_seed(seed, step, micro))  # what the trainer does before a micro-batch
    assert not torch.equal(torch.rand(8), coin)


def test_seeds_are_a_pure_function_of_their_parts():
    assert seeds.derive_seed(1, 2, 3) == seeds.derive_seed(1, 2, 3) != seeds.derive_seed(1, 3, 2)
