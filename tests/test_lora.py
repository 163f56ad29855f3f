"""LoRA properties: identity at init, merge == unmerge, frozen base, analytic gradients, rsLoRA and
DoRA, freezing policies, LoRA+ groups, and adapter files in PEFT's layout (minilm/model/lora.py,
minilm/training/freeze.py, minilm/formats/peft.py)."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from minilm.config import ModelConfig
from minilm.training.freeze import (count_parameters, freeze_all, lora_param_groups, trainable_parameter_report,
                           unfreeze_top_k_blocks)
from minilm.formats.peft import load_adapter, save_adapter
from minilm.model.gpt import GPT
from minilm.model.lora import LoRALinear, apply_lora, lora_layers, merge_and_unload, merge_lora, unmerge_lora

CONFIG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
dims = st.integers(1, 24)
ranks = st.integers(1, 8)
alphas = st.floats(0.5, 32.0)


def make_gpt(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    return GPT(config)


def tokens(seed=1, batch=2, length=8):
    return torch.randint(0, CONFIG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(module, seed=0, std=0.1):
    """Give B (and m) non-zero values so the adapter actually changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def make_layer(in_f, out_f, r, alpha, dtype=torch.float32, bias=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    base = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    return LoRALinear(base, r, alpha, **kwargs)


# ---------------------------------------------------------------- the layer
@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, bias=st.booleans(), rslora=st.booleans(),
       dora=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_fresh_adapter_is_the_identity(in_f, out_f, r, alpha, bias, rslora, dora, dtype):
    layer = make_layer(in_f, out_f, r, alpha, dtype, bias, rslora=rslora, dora=dora)
    x = torch.randn(3, 5, in_f).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    if dora:  # m / ||W|| is 1 up to the rounding of a norm recomputed in fp32
        torch.testing.assert_close(y, layer.base_layer(x))
    else:
        assert torch.equal(y, layer.base_layer(x))


def test_fresh_adapters_leave_the_model_unchanged():
    model = make_gpt()
    idx = tokens()
    before = model(idx)
    apply_lora(model, "all-linear", r=4, alpha=8)
    assert torch.equal(model(idx), before)


@given(r=ranks, alpha=alphas, rslora=st.booleans())
def test_scaling_is_alpha_over_r_or_sqrt_r(r, alpha, rslora):
    layer = make_layer(8, 8, r, alpha, rslora=rslora)
    assert layer.scaling == pytest.approx(alpha / math.sqrt(r) if rslora else alpha / r)


def test_low_precision_base_keeps_fp32_adapter_and_output_dtype():
    layer = make_layer(16, 12, 4, 8.0, dtype=torch.bfloat16)
    randomize_adapters(layer)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_base_matches_fp32_reference():
    layer = make_layer(64, 48, 8, 16.0)
    randomize_adapters(layer)
    x = torch.randn(4, 64)
    reference = layer(x)
    layer_cuda = copy.deepcopy(layer).cuda()
    layer_cuda.base_layer.to(torch.bfloat16)
    y = layer_cuda(x.cuda().to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and layer_cuda.lora_A.dtype == torch.float32
    torch.testing.assert_close(y.float().cpu(), reference, atol=3e-2, rtol=3e-2)


def test_dropout_touches_only_the_adapter_branch():
    layer = make_layer(16, 12, 4, 8.0, dropout=0.9)  # B = 0: with dropout on the base, outputs would differ
    layer.train()
    x = torch.randn(6, 16)
    assert torch.equal(layer(x), layer.base_layer(x))


@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, rslora=st.booleans(), n=st.integers(1, 6))
def test_gradients_match_the_analytic_ones(in_f, out_f, r, alpha, rslora, n):
    """y = W x + s B A x, L = sum(g * y)  =>  dL/dB = s g (A x)^T,  dL/dA = s B^T g x^T (summed over rows)."""
    layer = make_layer(in_f, out_f, r, alpha, torch.float64, rslora=rslora)
    randomize_adapters(layer)
    x = torch.randn(n, in_f, dtype=torch.float64)
    g = torch.randn(n, out_f, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    A, B, s = layer.lora_A.detach(), layer.lora_B.detach(), layer.scaling
    torch.testing.assert_close(layer.lora_B.grad, s * g.T @ (x @ A.T))
    torch.testing.assert_close(layer.lora_A.grad, s * B.T @ g.T @ x)


@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, rslora=st.booleans(), dora=st.booleans())
def test_merge_equals_unmerged_and_unmerge_restores_w(in_f, out_f, r, alpha, rslora, dora):
    layer = make_layer(in_f, out_f, r, alpha, rslora=rslora, dora=dora)
    layer.base_layer.weight.requires_grad_(False)
    randomize_adapters(layer, std=0.3 / math.sqrt(alpha))
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, in_f)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    merged_w = layer.base_layer.weight.detach().clone()
    layer.merge()  # twice: never double-counted
    assert torch.equal(layer.base_layer.weight, merged_w)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_refuses_non_finite_weights():
    layer = make_layer(8, 8, 2, 4.0)
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="inf/nan"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w0) and not layer.merged


@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas)
@settings(max_examples=10)
def test_dora_matches_its_weight_formula_in_value_and_gradient(in_f, out_f, r, alpha):
    """Fast form base(x) + (m/n - 1) W x + (m/n) s B A x  ==  reference (m * V / n.detach()) x + b."""
    layer = make_layer(in_f, out_f, r, alpha, torch.float64, dora=True)
    randomize_adapters(layer)
    reference = copy.deepcopy(layer)
    x, g = torch.randn(4, in_f, dtype=torch.float64), torch.randn(4, out_f, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    V = reference.base_layer.weight.detach() + reference.scaling * reference.lora_B @ reference.lora_A
    W_dora = reference.lora_magnitude_vector[:, None] * V / V.norm(dim=1, keepdim=True).detach()
    y_ref = x @ W_dora.T + reference.base_layer.bias.detach()
    torch.testing.assert_close(layer(x), y_ref)
    (y_ref * g).sum().backward()
    for name in ("lora_A", "lora_B", "lora_magnitude_vector"):
        torch.testing.assert_close(getattr(layer, name).grad, getattr(reference, name).grad)


def test_dora_update_is_magnitude_times_unit_direction():
    """With a non-zero update, DoRA's effective weight rows have exactly the norms m."""
    layer = make_layer(12, 10, 4, 8.0, dora=True, bias=False)
    randomize_adapters(layer)
    x = torch.eye(12)
    effective_w = layer(x).T  # (out, in): the layer applied to the basis vectors
    torch.testing.assert_close(effective_w.norm(dim=1), layer.lora_magnitude_vector.detach())
    (layer(torch.randn(3, 12)).sum()).backward()
    assert layer.lora_magnitude_vector.grad is not None


# ---------------------------------------------------------------- the model
def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs():
    model = make_gpt()
    names = set(model.state_dict())
    apply_lora(model, "all-linear", r=4, alpha=8, dora=True)
    randomize_adapters(model)
    idx = tokens()
    expected = model(idx)
    merge_lora(model)
    torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    merge_and_unload(model)
    assert not lora_layers(model) and set(model.state_dict()) == names
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_training_changes_only_adapters_and_chosen_biases(bias):
    model = make_gpt()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ["c_attn", "mlp.c_fc"], r=4, alpha=8, bias=bias)
    optimizer = torch.optim.AdamW(lora_param_groups(model, lr=1e-2, weight_decay=0.1, loraplus_ratio=4.0))
    idx = tokens()
    for _ in range(3):
        logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for name, old in before.items():
        adapted_bias = name.endswith(("c_attn.bias", "c_fc.bias"))
        should_change = bias == "all" and name.endswith("bias") or bias == "lora_only" and adapted_bias
        assert torch.equal(after[name], old) != should_change, name
    assert all(not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if n.endswith("lora_B"))


def test_targets_exact_suffix_regex_and_errors():
    def adapted(targets):
        return sorted(lora_layers(apply_lora(make_gpt(), targets, r=2, alpha=2)))
    assert adapted(["transformer.h.1.mlp.c_fc"]) == ["transformer.h.1.mlp.c_fc"]
    assert adapted(["attn.c_proj"]) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert adapted("c_attn,mlp.c_proj") == adapted(["c_attn", "mlp.c_proj"])
    assert adapted(r"transformer\.h\.1\.attn\..*") == ["transformer.h.1.attn.c_attn",
                                                        "transformer.h.1.attn.c_proj"]
    assert len(adapted("all-linear")) == 4 * CONFIG.n_layer  # lm_head (tied) left out
    with pytest.raises(ValueError, match=r"available: transformer\.h\.\{i\}\.attn\.c_attn"):
        apply_lora(make_gpt(), ["q_proj"], r=2, alpha=2)
    with pytest.raises(ValueError, match="tied"):
        apply_lora(make_gpt(), ["c_attn", "lm_head"], r=2, alpha=2)
    with pytest.raises(ValueError, match="not a valid regex"):
        apply_lora(make_gpt(), "c_attn(", r=2, alpha=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(apply_lora(make_gpt(), "all-linear", r=2, alpha=2), "all-linear", r=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(make_gpt(), "all-linear", r=0, alpha=2)
    with pytest.raises(ValueError, match="bias must be one of"):
        apply_lora(make_gpt(), "all-linear", r=2, alpha=2, bias="some")


# ---------------------------------------------------------------- freezing, report, optimizer groups
def test_report_counts_trainable_parameters():
    model = apply_lora(make_gpt(), "all-linear", r=4, alpha=8)
    c = CONFIG.n_embd
    per_block = 4 * ((3 * c + c) + (c + c) + (c + 4 * c) + (4 * c + c))  # r * (in + out) per layer
    trainable, total = count_parameters(model)
    assert trainable == CONFIG.n_layer * per_block
    assert total == sum(p.numel() for p in make_gpt().parameters()) + trainable
    assert f"{trainable:,} / {total:,}" in trainable_parameter_report(model)


def test_top_k_blocks_alone_and_next_to_lora():
    model = make_gpt()
    freeze_all(model)
    unfreeze_top_k_blocks(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    top = ("transformer.h.1.", "transformer.ln_f.")
    expected = {n for n, _ in model.named_parameters() if n.startswith(top)}
    assert trainable == expected
    model = apply_lora(make_gpt(), "all-linear", r=2, alpha=2)
    unfreeze_top_k_blocks(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "transformer.h.1.attn.c_attn.base_layer.weight" in trainable
    assert "transformer.h.0.attn.c_attn.lora_A" in trainable
    assert "transformer.h.0.attn.c_attn.base_layer.weight" not in trainable
    with pytest.raises(ValueError, match="top_k_layers"):
        unfreeze_top_k_blocks(model, CONFIG.n_layer + 1)


@given(ratio=st.floats(1.0, 32.0), lr=st.floats(1e-5, 1e-2))
@settings(max_examples=5)
def test_loraplus_groups_cover_each_trainable_parameter_once(ratio, lr):
    model = apply_lora(make_gpt(), "all-linear", r=2, alpha=2, dora=True, bias="lora_only")
    groups = lora_param_groups(model, lr=lr, weight_decay=0.1, loraplus_ratio=ratio)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    for g in groups:
        is_b = [n.endswith("lora_B") for n in g["names"]]
        assert all(is_b) or not any(is_b)
        assert g["lr"] == pytest.approx(lr * ratio if all(is_b) else lr)
        assert g["lr_scale"] * lr == pytest.approx(g["lr"])
        decays = [p.dim() >= 2 for p in g["params"]]
        assert g["weight_decay"] == (0.1 if all(decays) else 0.0) and (all(decays) or not any(decays))
    torch.optim.AdamW(groups)  # accepted as is


# ---------------------------------------------------------------- adapter files
@pytest.mark.parametrize("dora,bias", [(False, "none"), (True, "all"), (False, "lora_only")])
def test_adapter_round_trip_is_exact_and_holds_no_base_weights(tmp_path, dora, bias):
    model = apply_lora(make_gpt(), ["c_attn", "c_fc"], r=4, alpha=8, rslora=True, dora=dora, bias=bias)
    randomize_adapters(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.01)  # so a bias that is not saved/loaded would show
    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.transformer.") for k in tensors)
    assert not any(k.endswith(".weight") and "lora_" not in k for k in tensors)  # no base weight
    if bias == "none":
        assert all(k.endswith(("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")) for k in tensors)
    if bias == "lora_only":
        assert "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias" in tensors
        assert not any(".ln_" in k or "c_proj" in k for k in tensors)
    assert any(k.endswith("lora_magnitude_vector") for k in tensors) == dora
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["c_attn", "c_fc"] and config["use_rslora"] and config["bias"] == bias
    assert config["use_dora"] == dora and config["fan_in_fan_out"]

    fresh = make_gpt()  # same seed: the same base weights, no adapters
    load_adapter(fresh, tmp_path)
    idx = tokens()
    if bias == "all":
        assert torch.equal(fresh(idx), model(idx))
    else:  # biases we did not save keep the fresh model's values; put ours back to compare outputs
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(idx), model(idx))
    loaded = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(loaded[name], p)


def test_adapter_bytes_scale_with_r(tmp_path):
    sizes = {}
    for r in (2, 8):
        save_adapter(apply_lora(make_gpt(), "all-linear", r=r, alpha=8), tmp_path / str(r))
        sizes[r] = (tmp_path / str(r) / "adapter_model.safetensors").stat().st_size
    assert 3 * sizes[2] < sizes[8] < 5 * sizes[2]


def test_loading_onto_other_shapes_or_targets_fails_clearly(tmp_path):
    save_adapter(apply_lora(make_gpt(), "all-linear", r=4, alpha=8), tmp_path)
    wider = make_gpt(config=ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=48))
    with pytest.raises(ValueError, match=r"shape \(4, 32\) in the file but \(4, 48\) in the model"):
        load_adapter(wider, tmp_path)
    assert not lora_layers(wider)  # a failed load changes nothing
    other_targets = apply_lora(make_gpt(), ["c_attn"], r=4, alpha=8)
    with pytest.raises(ValueError, match=r"unexpected base_model\.model\.transformer\.h\.0\.mlp\.c_fc"):
        load_adapter(other_targets, tmp_path)
    other_rank = apply_lora(make_gpt(), "all-linear", r=2, alpha=8)
    with pytest.raises(ValueError, match="r=4"):
        load_adapter(other_rank, tmp_path)


def test_loads_a_peft_style_adapter(tmp_path):
    """A file as PEFT writes it for GPT-2 (regex targets, int alpha, extra config fields) loads and
    gives W x + s B A x."""
    r, alpha, c = 2, 4, CONFIG.n_embd
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(r, c, generator=g), torch.randn(3 * c, r, generator=g)
    save_file({"base_model.model.transformer.h.1.attn.c_attn.lora_A.weight": A,
               "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight": B},
              str(tmp_path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05,
        "target_modules": r"transformer\.h\.1\.attn\.c_attn", "bias": "none", "fan_in_fan_out": True,
        "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "revision": None}))
    model = load_adapter(make_gpt(), tmp_path)
    layer = model.transformer.h[1].attn.c_attn
    assert list(lora_layers(model)) == ["transformer.h.1.attn.c_attn"]
    expected_w = layer.base_layer.weight + (alpha / r) * B @ A
    merge_and_unload(model)
    torch.testing.assert_close(model.transformer.h[1].attn.c_attn.weight, expected_w)


def test_unsupported_peft_config_is_refused(tmp_path):
    save_adapter(apply_lora(make_gpt(), "all-linear", r=4, alpha=8), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["rank_pattern"] = {"c_attn": 8}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rank_pattern"):
        load_adapter(make_gpt(), tmp_path)


def test_save_refuses_top_k_weights(tmp_path):
    model = apply_lora(make_gpt(), "all-linear", r=2, alpha=2)
    unfreeze_top_k_blocks(model, 1)
    with pytest.raises(ValueError, match="full checkpoint"):
        save_adapter(model, tmp_path)
