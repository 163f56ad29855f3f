"""LoRA: train a low-rank update next to each frozen weight matrix, written out by hand.

A pretrained linear layer computes h = W x + b with W: (out, in). LoRA (Hu et al., 2021) freezes W
and learns a rank-r correction instead:

    h = W x + b + s * B A dropout(x)          A: (r, in),  B: (out, r),  r << min(in, out)
    s = alpha / r                             (rsLoRA, Kalajdzievski 2023: s = alpha / sqrt(r))

    x ──> [ W (frozen) ] ─────────────────────┐
    │                                         + ──> h
    └──> dropout ──> [ A ] ──> [ B ] ──> * s ─┘

A starts kaiming-uniform and B at zero, so B A = 0 and a fresh adapter changes nothing. Only A and
B train: r * (in + out) numbers per layer instead of in * out.

Merging folds the update into the weight, W <- W + s B A, so inference costs nothing extra;
unmerging subtracts it again. Both are computed in fp32 and checked to be finite.

DoRA (Liu et al., 2024) splits each output row of the updated weight into a length and a direction
and learns the length m: (out,) separately, initialised to the row norms of W:

    W' = m * (W + s B A) / ||W + s B A||_row      the norm is detached (treated as a constant)
    h  = W' x + b

Written as a correction to the base output (PEFT's form, which keeps the base layer's call as is):
    h = base(x) + (m / n - 1) * W x' + (m / n) * s * B A x',   n = ||W + s B A||_row,  x' = dropout(x)

Module names follow GPT-2 (transformer.h.{i}.attn.c_attn, ...), and the wrapped layer is the child
`base_layer`, as in Hugging Face PEFT, so adapter files map onto PEFT's key names one to one
(minilm/formats/peft.py). Freezing policies beyond "adapters only", the trainable-parameter report and
LoRA+ optimizer groups live in minilm/training/freeze.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from minilm.model.linear import linear

ALL_LINEAR = "all-linear"  # every linear layer of the blocks; never the (tied) LM head
BIAS_MODES = ("none", "all", "lora_only")
Targets = Union[str, Sequence[str]]


@dataclass(frozen=True)
class LoRAConfig:
    """What apply_lora was asked for; saved with the adapter (as PEFT's adapter_config.json)."""
    targets: Targets
    r: int
    alpha: float
    dropout: float = 0.0
    rslora: bool = False
    dora: bool = False
    bias: str = "none"

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base_layer(x) + s * B A dropout(x)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False, dora: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer  # kept whole and called as is
        self.r, self.alpha, self.rslora, self.dora = r, alpha, rslora, dora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base_layer.weight
        # Mixed precision: a bf16/fp16 base keeps fp32 adapters (small updates would round away).
        dtype = torch.promote_types(weight.dtype, torch.float32)
        out_features, in_features = weight.shape
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=weight.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear(in, r) would
        if dora:  # m starts as the row norms of W (B A = 0), so W' = W at init
            self.lora_magnitude_vector = nn.Parameter(self._row_norms(weight.to(dtype)).detach())
        self.merged = False
        self._merged_norm: Optional[torch.Tensor] = None  # DoRA: n at merge time, to unmerge exactly

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:.4g}, dora={self.dora}, merged={self.merged}"

    def delta_weight(self) -> torch.Tensor:
        """s * B A: (out, in), in the adapter's dtype."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def _row_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """n = ||W + s B A|| of each output row: (out,)."""
        return torch.linalg.vector_norm(weight + self.delta_weight(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_out = self.base_layer(x)
        if self.merged:  # the update already lives in base_layer.weight
            return base_out
        x_lora = self.dropout(x).to(self.lora_A.dtype)  # dropout on the adapter branch only
        # (.., in) -> (.., r) -> (.., out); s applied to the (.., r) tensor, not the (.., out) one:
        # same value, less memory traffic. linear() is x W^T (by oneDNN for fp32 on a CPU).
        lora_out = linear(linear(x_lora, self.lora_A) * self.scaling, self.lora_B)
        if not self.dora:
            return base_out + lora_out.to(base_out.dtype)
        weight = self.base_layer.weight.to(self.lora_A.dtype)
        norm = self._row_norms(weight).detach()  # detached, as in the DoRA paper (section 4.3)
        mag_scale = self.lora_magnitude_vector / norm  # (out,)
        correction = (mag_scale - 1) * linear(x_lora, weight) + mag_scale * lora_out
        return base_out + correction.to(base_out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A (DoRA: W <- m * (W + s B A) / n). Merging twice is a no-op."""
        if self.merged:
            return
        weight = self.base_layer.weight
        merged = weight.float() + self.delta_weight().float()
        if self.dora:
            self._merged_norm = torch.linalg.vector_norm(merged, dim=1)
            merged = merged * (self.lora_magnitude_vector.float() / self._merged_norm)[:, None]
        if not torch.isfinite(merged).all():
            raise FloatingPointError("merging LoRA gave inf/nan weights; the adapter has diverged, "
                                     "check its values before merging")
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): W <- W - s B A (DoRA: W <- W * n / m - s B A). Exact up to rounding."""
        if not self.merged:
            return
        weight = self.base_layer.weight
        unmerged = weight.float()
        if self.dora:
            unmerged = unmerged / (self.lora_magnitude_vector.float() / self._merged_norm)[:, None]
            self._merged_norm = None
        unmerged = unmerged - self.delta_weight().float()
        if not torch.isfinite(unmerged).all():
            raise FloatingPointError("unmerging LoRA gave inf/nan weights (a DoRA magnitude of zero?)")
        weight.copy_(unmerged.to(weight.dtype))
        self.merged = False


# ---------------------------------------------------------------- choosing the layers
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Qualified name -> LoRALinear for every adapter in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters reachable under two names (the LM head shares the token embedding)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


def candidate_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear that may get an adapter: not inside an adapter, weight not tied."""
    tied = _tied_parameter_ids(model)
    inside = tuple(f"{name}." for name in lora_layers(model))
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not name.startswith(inside):
            if id(m.weight) not in tied:
                found[name] = m
    return found


def normalize_targets(targets: Targets) -> Targets:
    """PEFT's convention: a string is a regex (or "all-linear"), a list holds names. For the command
    line, a string of plain names separated by commas ("c_attn,mlp.c_fc") is taken as a list."""
    if isinstance(targets, str):
        if targets != ALL_LINEAR and re.fullmatch(r"[\w.]+(,[\w.]+)*", targets):
            return targets.split(",")
        try:
            re.compile(targets)
        except re.error as e:
            raise ValueError(f"LoRA target {targets!r} is not a valid regex ({e})") from None
        return targets
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"LoRA targets must be a string or a non-empty list of names, got {targets!r}")
    return list(targets)


def matches_target(name: str, targets: Targets) -> bool:
    """Does a module name match? A regex must match the whole name; a list entry must equal the
    name or be a dotted suffix of it ("c_attn" matches "transformer.h.0.attn.c_attn")."""
    targets = normalize_targets(targets)
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def resolve_targets(model: nn.Module, targets: Targets) -> list[str]:
    """Names of the linear layers that `targets` selects; an error naming the choices if none."""
    targets = normalize_targets(targets)
    candidates = candidate_linears(model)
    if targets == ALL_LINEAR:
        # PEFT's "all-linear" also leaves out the output layer, tied or not
        return [name for name in candidates if name != "lm_head"]
    tied = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in candidates
            and matches_target(n, targets)]
    if tied and not isinstance(targets, str):  # named explicitly (a regex may just be broad)
        raise ValueError(f"LoRA target {targets!r} selects {tied}, whose weight is tied to the token "
                         "embedding (merging would change it); target the blocks' layers")
    chosen = [name for name in candidates if matches_target(name, targets)]
    if not chosen:
        available = sorted({re.sub(r"\.h\.\d+\.", ".h.{i}.", n) for n in candidates})
        raise ValueError(f"LoRA targets {targets!r} match no linear layer; available: "
                         f"{', '.join(available)} (or '{ALL_LINEAR}')")
    return chosen


# ---------------------------------------------------------------- injecting and freezing
def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze everything but the adapters; bias "all" trains every bias, "lora_only" those of
    the adapted layers."""
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or (bias == "all" and name.endswith("bias"))
    if bias == "lora_only":
        for layer in lora_layers(model).values():
            if layer.base_layer.bias is not None:
                layer.base_layer.bias.requires_grad = True


def apply_lora(model: nn.Module, targets: Targets = ALL_LINEAR, r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, rslora: bool = False, dora: bool = False,
               bias: str = "none") -> nn.Module:
    """Wrap the selected linear layers in LoRALinear (in place) and freeze all base weights.

    targets: "all-linear", a list of exact names / dotted suffixes (["c_attn", "mlp.c_fc"]), or a
    regex matched against the whole name (r"transformer\\.h\\.[23]\\..*"). Returns the model, which
    remembers its LoRAConfig as `model.lora_config`.
    """
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"lora alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout!r}")
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; call merge_and_unload(model) first")
    targets = normalize_targets(targets)
    names = resolve_targets(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, rslora, dora))
    model.lora_config = LoRAConfig(targets, r, float(alpha), float(dropout), rslora, dora, bias)
    mark_only_lora_as_trainable(model, bias)
    return model


# ---------------------------------------------------------------- merging
def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters; call apply_lora(model, ...) first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in place); idempotent."""
    for layer in _require_lora(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every merged adapter back out of its base weight (in place); idempotent."""
    for layer in _require_lora(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace each LoRALinear by its base nn.Linear: a plain model with the original
    module names (exportable with model.to_hf_gpt2()), every parameter trainable again."""
    for name, layer in _require_lora(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    model.__dict__.pop("lora_config", None)
    model.requires_grad_(True)
    return model
