"""Data parallelism: the micro-batch split over ranks, and a 2-process gloo run on CPU that ends
with the same weights as one process training on the same global batch.
"""
import socket

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from minilm.model.gpt import GPT
from minilm.training.distributed import DistInfo
from test_trainer import MODEL, collate_rows, make_trainer, ragged_rows


@given(world=st.integers(1, 8), per_rank=st.integers(1, 6))
def test_ranks_split_the_micro_batches_of_a_step_exactly(world, per_rank):
    grad_accum = world * per_rank
    shares = [list(DistInfo(rank, rank, world).micro_batches(grad_accum)) for rank in range(world)]
    assert sorted(m for share in shares for m in share) == list(range(grad_accum))
    assert all(len(share) == per_rank for share in shares)


def test_grad_accum_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ValueError, match=r"grad_accum \(3\) must be a multiple .* \(2\); use --grad_accum 4"):
        DistInfo(0, 0, 2).micro_batches(3)


GRAD_ACCUM, PER_MICRO, STEPS = 4, 2, 3


def double_model():
    """float64, so that gradients which are zero in exact arithmetic (the key bias) stay ~1e-17:
    Adam divides by sqrt(v) + eps and would blow float32 rounding noise up to lr-sized steps."""
    torch.manual_seed(0)
    return GPT(MODEL).double()


def masked_batches(step, micro):
    """Ragged, masked micro-batches: the ranks hold different numbers of counted tokens, so only
    the global token count gives the single-process gradient."""
    return collate_rows(ragged_rows(1000 * step + micro, PER_MICRO))


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        trainer = make_trainer(run_dir, model=double_model(), dist=DistInfo(rank, rank, world), batches=masked_batches,
                               batch_size=PER_MICRO, grad_accum=GRAD_ACCUM, max_iters=STEPS,
                               eval_interval=STEPS, normalize="token")
        trainer.fit()
        if rank == 0:
            torch.save(trainer.raw_model.state_dict(), out)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(out)), nprocs=2, join=True)
    ddp_weights = torch.load(out, weights_only=True)

    single = make_trainer(tmp_path / "single", model=double_model(), batches=masked_batches, batch_size=PER_MICRO,
                          grad_accum=GRAD_ACCUM, max_iters=STEPS, eval_interval=STEPS, normalize="token")
    single.fit()
    before = double_model().state_dict()
    for name, value in single.raw_model.state_dict().items():
        assert not torch.equal(value, before[name])  # it did train
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-9, atol=1e-9)
    # rank 0 alone wrote the run directory
    assert (tmp_path / "ddp" / "pretrain" / "checkpoints" / "step_000003").is_dir()
