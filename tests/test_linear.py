"""minilm/model/linear.py: the oneDNN fast path computes F.linear (values and the three gradients, up to
fp32 rounding), and F.linear itself runs wherever the fast path must not (autocast, bf16, off)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st

from minilm.model.linear import Linear, OneDNNLinear, linear, linear_backend, reference_path, uses_onednn
import minilm.model.linear as minilm_linear

needs_onednn = pytest.mark.skipif(linear_backend() != "onednn", reason="this torch build has no oneDNN linear")


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@needs_onednn
@given(lead=st.sampled_from([(7,), (2, 5), (3, 1, 4)]), n_in=st.integers(1, 40), n_out=st.integers(1, 40),
       bias=st.booleans(), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_onednn_linear_equals_f_linear_with_all_gradients(lead, n_in, n_out, bias, transposed, seed):
    """Wide and narrow weights (both orientations of dW), 2-D to 4-D inputs, a transposed (non-
    contiguous) input, with and without bias."""
    x = randn(*lead, n_in, seed=seed)
    if transposed:  # the same values, laid out as the transpose of the last two axes
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2) if x.dim() > 1 else x
    x.requires_grad_()
    weight = randn(n_out, n_in, seed=seed + 1).requires_grad_()
    b = randn(n_out, seed=seed + 2).requires_grad_() if bias else None
    assert uses_onednn(x, weight)
    fast, reference = linear(x, weight, b), F.linear(x, weight, b)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    grad = randn(*fast.shape, seed=seed + 3)
    inputs = [t for t in (x, weight, b) if t is not None]
    for g_fast, g_ref, name in zip(torch.autograd.grad(fast, inputs, grad),
                                   torch.autograd.grad(reference, inputs, grad), ("x", "weight", "bias")):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-5, msg=name)


@needs_onednn
def test_a_frozen_weight_keeps_no_activation_and_gets_no_gradient():
    """LoRA's base layers: dx only; the saved x would be memory held for a gradient never made."""
    x, weight = randn(4, 6, seed=0).requires_grad_(), randn(3, 6, seed=1)
    y = OneDNNLinear.apply(x, weight, None)
    saved_x, saved_weight = y.grad_fn.saved_tensors
    assert saved_x is None and saved_weight is weight
    (dx,) = torch.autograd.grad(y.sum(), [x])
    torch.testing.assert_close(dx, torch.ones(4, 3) @ weight)


def test_f_linear_runs_under_autocast_in_bf16_and_when_switched_off(monkeypatch):
    x, weight = randn(4, 8, seed=0), randn(5, 8, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, weight)  # autocast keeps its bf16 matmul
        assert linear(x, weight).dtype == torch.bfloat16
    assert not uses_onednn(x.bfloat16(), weight.bfloat16())
    assert torch.equal(linear(x.double(), weight.double()), F.linear(x.double(), weight.double()))
    with reference_path():  # the tests' switch: the reference, nested safely
        with reference_path():
            assert not uses_onednn(x, weight)
        assert not uses_onednn(x, weight) and torch.equal(linear(x, weight), F.linear(x, weight))
    assert uses_onednn(x, weight) == (linear_backend() == "onednn")
    monkeypatch.setattr(minilm_linear, "_OP", None)  # MINILM_ONEDNN=0, or a build without oneDNN
    assert not uses_onednn(x, weight) and linear_backend() == "torch"
    assert torch.equal(linear(x, weight), F.linear(x, weight))


def test_linear_module_is_an_nn_linear_whose_output_may_change_in_place():
    torch.manual_seed(0)
    ours = Linear(8, 5)
    torch.manual_seed(0)
    theirs = nn.Linear(8, 5)
    assert isinstance(ours, nn.Linear) and ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    x = randn(2, 3, 8, seed=0).requires_grad_()
    y = ours(x)
    y.add_(1.0)  # a LoRA sum or residual may reuse the buffer: the output must not be a custom-function view
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, 3, 5) @ ours.weight.detach())
