"""Muon: momentum SGD whose update matrix is orthogonalised (Jordan et al. 2024), for hidden matrices.

For a weight matrix W (rows x cols) with gradient G, one step with learning rate lr, momentum mu
and weight decay wd is

    B <- mu B + (1 - mu) G               momentum buffer, an average of recent gradients
    M <- mu B + (1 - mu) G               Nesterov, with the new B: the average one step ahead
                                         (M <- B without Nesterov)
    O <- NS(M)  ~  U V^T                 where M = U S V^T (reduced SVD): every direction of M at unit
                                         size, so rare directions move as far as dominant ones
    W <- (1 - lr wd) W                   decoupled weight decay, at the unadjusted lr
    W <- W - lr 0.2 sqrt(max(rows, cols)) O      "match_rms_adamw"

Why the last factor: U V^T has min(rows, cols) unit singular values, so its entries have RMS
1 / sqrt(max(rows, cols)); times sqrt(max(rows, cols)) the update has RMS 1, times 0.2 it has
about the RMS of an AdamW update (Liu et al. 2025, "Muon is Scalable for LLM Training"), so the
lr and weight decay tuned for AdamW apply unchanged. ("original", Jordan's rule, scales by
sqrt(max(1, rows / cols)) instead.)

NS is a Newton-Schulz iteration: it never computes an SVD, only matrix products, which keep the
singular vectors and map each singular value s through the odd polynomial p(s) = a s + b s^3 + c s^5.
See `orthogonalize` for the coefficients and what they promise.

The arithmetic is the one torch.optim.Muon (torch >= 2.9) does, so that with the same ns_dtype the
two give the same bits (tests/test_muon.py checks it) and a checkpoint of either resumes in the
other: the state is one "momentum_buffer" per matrix, the param groups hold the same keys. What
differs is the dtype of the iteration: torch always runs it in bf16, which on a CPU without native
bf16 instructions is 100-200x slower than fp32; here the caller chooses (minilm/training/optim.py asks the
runtime). The dtype is a property of the machine, not of the run, so it is not saved in the state.
"""
from __future__ import annotations

import math

import torch

# Jordan's quintic: chosen to maximise the slope at 0 (a = 3.4445) while keeping 5 steps bounded.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7  # guards the division by the norm of an all-zero update

# What the coefficients promise (tests/test_muon.py): after NS_STEPS steps, every singular value at
# least NS_BAND_FROM x the Frobenius norm of the input lands in [NS_BAND_LOW, NS_BAND_HIGH]. Smaller
# ones are multiplied by at most a^5 ~ 490 and stay below the band.
NS_BAND_FROM, NS_BAND_LOW, NS_BAND_HIGH = 0.002, 0.68, 1.21

LR_RULES = ("match_rms_adamw", "original")


def orthogonalize(m: torch.Tensor, dtype: torch.dtype = torch.float32, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = NS_EPS) -> torch.Tensor:
    """An approximation of U V^T, the orthogonal polar factor of m = U S V^T, computed in `dtype`.

    Divided by its Frobenius norm (which bounds the largest singular value), m has singular values in
    (0, 1]. Each step X <- a X + b (X X^T) X + c (X X^T)^2 X keeps U and V and maps every singular
    value s to p(s) = a s + b s^3 + c s^5. Repeated, p pushes each s towards the band [0.68, 1.21]
    around 1, and fast: p'(0) = a = 3.4445, so small singular values grow 3.4x per step. The
    coefficients trade exactness for speed: the values do not converge to 1 (p(1) = a + b + c = 0.70,
    and p's fixed point in the band, 0.868, repels: they keep oscillating inside it), which Muon
    does not need; five steps bring every s of at least 0.002 there.

    A wide X (rows <= cols) makes X X^T the smaller Gram matrix; a tall m is transposed first.
    Returns a tensor of m's shape in `dtype`.
    """
    if m.dim() != 2:
        raise ValueError(f"orthogonalize takes a matrix, got a tensor of shape {tuple(m.shape)}")
    a, b, c = coefficients
    x = m.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # singular values now in [0, 1]
    for _ in range(steps):
        gram = x @ x.T  # A = X X^T: (rows, rows), rows <= cols
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


def adjusted_lr(lr: float, shape: torch.Size, rule: str) -> float:
    """The lr the orthogonalised update is applied with (module docstring)."""
    rows, cols = shape[:2]
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "original":
        return lr * math.sqrt(max(1, rows / cols))
    raise ValueError(f"Muon's adjust_lr_fn must be one of {', '.join(LR_RULES)}, got {rule!r}")


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters (module docstring). `ns_dtype` is the dtype of the Newton-Schulz
    iteration: bf16 only where bf16 matmuls are native (CUDA, avx512_bf16 / AMX CPUs)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = NS_EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str = "match_rms_adamw",
                 ns_dtype: torch.dtype = torch.float32):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon needs lr >= 0, weight_decay >= 0 and 0 <= momentum < 1, "
                             f"got {lr}, {weight_decay}, {momentum}")
        if adjust_lr_fn not in LR_RULES:
            raise ValueError(f"Muon's adjust_lr_fn must be one of {', '.join(LR_RULES)}, got {adjust_lr_fn!r}")
        # The same group keys as torch.optim.Muon, so either's state_dict loads into the other.
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon is for weight matrices, got a parameter of shape {tuple(p.shape)}; "
                                     "give it to AdamW")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mu)  # B <- mu B + (1 - mu) G
                m = g.lerp(buf, mu) if group["nesterov"] else buf  # (1 - mu) G + mu B
                o = orthogonalize(m, self.ns_dtype, group["ns_steps"], group["ns_coefficients"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(o, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))
        return loss
