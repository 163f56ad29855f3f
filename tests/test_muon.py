"""Our Muon (minilm/training/muon.py): the band the Newton-Schulz coefficients promise, fp32 vs bf16, the
same bits as torch.optim.Muon when both iterate in bf16, and its state through a checkpoint."""
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minilm.training.muon import NS_BAND_FROM, NS_BAND_HIGH, NS_BAND_LOW, Muon, adjusted_lr, orthogonalize

SIDES = [16, 32, 48, 64, 128]
BF16_EPS = 2.0 ** -8  # bf16 keeps 8 significant bits: its unit roundoff


def spectrum_matrix(rows: int, cols: int, seed: int, scale: float) -> torch.Tensor:
    """U diag(s) V^T with random orthogonal U, V and s uniform in [0.05, 1] x scale: every singular
    value at least 0.05 / sqrt(min(rows, cols)) >= 0.004 of the Frobenius norm, square shapes included
    (a square Gaussian matrix has singular values near 0, below the band's promise)."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    s = 0.05 + 0.95 * torch.rand(k, generator=g)
    return scale * (u * s) @ v.T


@given(rows=st.sampled_from(SIDES), cols=st.sampled_from(SIDES), seed=st.integers(0, 10_000),
       log_scale=st.integers(-4, 4), gaussian=st.booleans(), bf16=st.booleans())
def test_singular_values_land_in_the_band_the_coefficients_promise(rows, cols, seed, log_scale, gaussian, bf16):
    if gaussian:  # a plain random gradient: its smallest singular values are checked against the promise
        m = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 10.0 ** log_scale
    else:
        m = spectrum_matrix(rows, cols, seed, 10.0 ** log_scale)
    s_in = torch.linalg.svdvals(m.double()) / m.double().norm()
    covered = s_in >= NS_BAND_FROM
    o = orthogonalize(m, torch.bfloat16 if bf16 else torch.float32)
    assert o.shape == m.shape and o.dtype == (torch.bfloat16 if bf16 else torch.float32)
    s_out = torch.linalg.svdvals(o.double())
    slack = 2 * BF16_EPS if bf16 else 1e-4  # the band is exact arithmetic's; bf16 rounds each product
    if covered.all():
        assert NS_BAND_LOW - slack <= s_out.min() and s_out.max() <= NS_BAND_HIGH + slack, (s_out.min(), s_out.max())
    else:  # values below NS_BAND_FROM grow at most a^5 ~ 490x and stay under the band: only the top holds
        assert s_out.max() <= NS_BAND_HIGH + slack
    assert not gaussian or rows == cols or covered.all()  # rectangular Gaussian matrices are well inside


def test_the_band_is_what_the_polynomial_does_to_each_singular_value():
    """The constants in minilm/training/muon.py, recomputed from p(s) = a s + b s^3 + c s^5 on a fine grid."""
    a, b, c = 3.4445, -4.7750, 2.0315
    s = torch.logspace(math.log10(NS_BAND_FROM), 0, 200_001, dtype=torch.float64)
    for _ in range(5):
        s = a * s + b * s ** 3 + c * s ** 5
    assert NS_BAND_LOW <= s.min() < NS_BAND_LOW + 0.005 and NS_BAND_HIGH - 0.01 < s.max() <= NS_BAND_HIGH


@given(rows=st.sampled_from(SIDES), cols=st.sampled_from(SIDES), seed=st.integers(0, 10_000))
def test_fp32_and_bf16_iterations_agree_to_bf16_precision(rows, cols, seed):
    m = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    exact = orthogonalize(m, torch.float32)
    rounded = orthogonalize(m, torch.bfloat16).float()
    # five steps of bf16 products, each rounding at 2^-8, and the iteration does not converge (so it
    # does not wash the rounding out): a few units of bf16 roundoff in all, 1.2-1.5% seen
    assert (rounded - exact).norm() <= 8 * BF16_EPS * exact.norm()


def test_a_zero_update_stays_zero_and_a_vector_is_refused():
    assert torch.equal(orthogonalize(torch.zeros(8, 16)), torch.zeros(8, 16))
    with pytest.raises(ValueError, match="takes a matrix"):
        orthogonalize(torch.zeros(8))
    with pytest.raises(ValueError, match="give it to AdamW"):
        Muon([torch.nn.Parameter(torch.zeros(8))])


def _run(optimizer_cls, shapes, steps, seed=0, **kwargs):
    """Parameters of `shapes` stepped `steps` times on seeded gradients; (params, optimizer)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in shapes]
    opt = optimizer_cls(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


SHAPES = [(64, 256), (256, 64), (48, 48), (96, 32)]  # wide, tall, square, tall


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("rule", ["match_rms_adamw", "original"])
def test_steps_equal_torch_muon_bit_for_bit_when_both_iterate_in_bf16(nesterov, rule):
    """torch.optim.Muon always iterates in bf16 (on this CPU avx512_bf16 makes that fast); with
    ns_dtype=bf16 ours is the same arithmetic: weight decay, momentum and the lr rule included."""
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=rule)
    ours, ours_opt = _run(Muon, SHAPES, 3, ns_dtype=torch.bfloat16, **kwargs)
    theirs, theirs_opt = _run(torch.optim.Muon, SHAPES, 3, **kwargs)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(ours_opt.state[p]["momentum_buffer"], theirs_opt.state[q]["momentum_buffer"])


def test_fp32_iteration_steps_close_to_bf16():
    ours, _ = _run(Muon, SHAPES, 3, lr=0.02, ns_dtype=torch.float32)
    theirs, _ = _run(Muon, SHAPES, 3, lr=0.02, ns_dtype=torch.bfloat16)
    start, _ = _run(Muon, SHAPES, 0)
    for p, q, p0 in zip(ours, theirs, start):
        assert not torch.equal(p, q)  # the dtype is really used
        assert (p - q).norm() <= 8 * BF16_EPS * (q - p0).norm()  # the updates differ by bf16 rounding


def test_match_rms_adamw_makes_the_step_rms_0_2_lr_for_any_shape():
    """The reason for the rule: U V^T has entries of RMS 1/sqrt(max(rows, cols)); the adjusted lr
    makes the step's RMS 0.2 lr, about an AdamW update's, whatever the shape."""
    def rms(t):
        return t.pow(2).mean().sqrt().item()
    for rows, cols in SHAPES:
        m = spectrum_matrix(rows, cols, 0, 1.0).double()
        u, _, vt = torch.linalg.svd(m, full_matrices=False)
        lr = adjusted_lr(1.0, m.shape, "match_rms_adamw")
        assert rms(lr * u @ vt) == pytest.approx(0.2, rel=1e-9)  # the exact polar factor
        assert 0.2 * NS_BAND_LOW <= rms(lr * orthogonalize(m.float())) <= 0.2 * NS_BAND_HIGH  # its approximation


@pytest.mark.parametrize("saved_by", [Muon, torch.optim.Muon])
def test_state_dict_round_trip_continues_identically(saved_by):
    """Three steps, a state_dict through torch.save / torch.load (what a checkpoint does), two more
    steps in a fresh optimizer = five steps uninterrupted. Saved by torch's Muon (the checkpoints
    written before minilm had its own) it loads into ours just the same."""
    kwargs = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    straight, _ = _run(Muon, SHAPES, 5, ns_dtype=torch.bfloat16, **kwargs)
    first, first_opt = _run(saved_by, SHAPES, 3, **({"ns_dtype": torch.bfloat16} if saved_by is Muon else {}), **kwargs)
    buffer = io.BytesIO()
    torch.save(first_opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"state", "param_groups"}
    assert all(set(s) == {"momentum_buffer"} for s in state["state"].values())
    # the seeded gradient stream continues where the first run left it: replay its first 3 steps' draws
    resumed, resumed_opt = _run_from(first, state, SHAPES, steps_done=3, steps=2, ns_dtype=torch.bfloat16, **kwargs)
    assert resumed_opt.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


def _run_from(params_then, opt_state, shapes, steps_done, steps, seed=0, **kwargs):
    """Continue _run(...) of `steps_done` steps for `steps` more, from saved weights and optimizer state."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in shapes]
    for _ in range(steps_done):  # draw the gradients the first run used, to continue its stream
        for p in params:
            torch.randn(p.shape, generator=g)
    with torch.no_grad():
        for p, saved in zip(params, params_then):
            p.copy_(saved)
    opt = Muon(params, **kwargs)
    opt.load_state_dict(opt_state)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt
