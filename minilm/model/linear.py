"""The linear layer y = x W^T + b, with a faster matrix multiply for fp32 on a CPU.

Every matmul of the decoder (q/k/v, MLPs, the LM head) and of LoRA is one call of `linear` here.
It computes F.linear's function; what changes is the kernel:

  - the reference: torch's F.linear, which on a CPU runs MKL's sgemm;
  - the fast path: oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise, the kernel torch's
    own compiler uses for CPU linears), forward and backward, in the autograd function below.

Why: at SmolLM2's shapes oneDNN's fp32 GEMM was faster than MKL's on the Zen 4 this was measured
on (docs/experiments.md, "Linears on oneDNN"); a kernel that wins on one processor can lose on
another, so `python bench/bench_smollm2.py` says whether it pays here, and MINILM_ONEDNN=0 turns it
off. The results are fp32 matmuls summed in another order: they differ from F.linear by float
rounding only (tests/test_linear.py compares values and all three gradients; tests/test_gguf.py
keeps SmolLM2's logits within 2x transformers' own fp32 error).

The fast path is taken on a CPU, with fp32 input and weight, outside autocast (bf16 autocast must
keep its bf16 matmuls) and outside torch.compile (its compiler picks kernels itself). Anywhere
else, or with MINILM_ONEDNN=0 in the environment, or when this torch build has no oneDNN, it is
F.linear itself. `linear_backend()` says which one runs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_op():
    """torch's oneDNN linear (dense fp32 weight, no fused activation), or None in builds without it."""
    if os.environ.get("MINILM_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_OP = _onednn_op()
_reference_only = False  # set inside `reference_path()`


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within this block every linear is F.linear, the reference (tests compare the two paths)."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


def _matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T for 2-D a (m, k) and b (n, k), by oneDNN; either may be a transposed view."""
    return _OP(a, b, None, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b, by oneDNN, with the three gradients of a linear layer (each a oneDNN matmul):

        dx = g W          dW = g^T x          db = sum of g over rows

    x is saved for backward only when W trains: a frozen weight (LoRA's base layers) needs
    dx alone, so no activation is kept for it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):  # x (rows, in)
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return _OP(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors  # x (rows, in), weight (out, in); grad (rows, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(grad, weight.t())  # g W
        if ctx.needs_input_grad[1]:
            # the orientation whose GEMM rows are the narrower side of W is the fast one (2-3x
            # for LoRA's (out, 16) matrices)
            if weight.size(0) >= weight.size(1):
                grad_w = _matmul_t(x.t(), grad.t()).t()  # (x^T g)^T
            else:
                grad_w = _matmul_t(grad.t(), x.t())  # g^T x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_OP is not None and not _reference_only and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by oneDNN where that is faster (see the module docstring)."""
    if uses_onednn(x, weight):
        # the function sees 2-D rows, so its output is no view and may be added to in place
        y = OneDNNLinear.apply(x.reshape(-1, x.size(-1)), weight, bias)  # (rows, out)
        return y.view(*x.shape[:-1], weight.size(0))
    return F.linear(x, weight, bias)


def linear_backend() -> str:
    """"onednn" when fp32 CPU linears take the fast path, else "torch" (F.linear)."""
    return "torch" if _OP is None else "onednn"


class Linear(nn.Linear):
    """nn.Linear (same parameters, names and initialisation) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
