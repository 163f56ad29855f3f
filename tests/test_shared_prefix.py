"""A start every row of a batch shares (a chat format's system turn) computed once: the same
logits and the same gradients as computing it in every row, for both families' choices, both
attention paths and LoRA; and the trainer's step with it equals the step without it, which
fine-tuning with noise (NEFTune, dropout) turns off."""

from dataclasses import replace

import torch
from hypothesis import given, strategies as st

from minilm.config import PRESETS, ModelConfig
from minilm.config_checks import MLPS, NORMS
from minilm.data.sft import add_embedding_noise
from minilm.model import lora
from minilm.model.gpt import GPT
from minilm.model.kv_cache import shared_prefix_length
from minilm.stages.finetune import finetune_is_noiseless
from minilm.training.trainer import SHARE_MIN_SAVING, Batch, TrainSettings, Trainer

shapes = st.fixed_dictionaries({
    "n_layer": st.integers(1, 2), "n_head": st.sampled_from([2, 4]), "kv_group": st.sampled_from([1, 2]),
    "position": st.sampled_from(["learned", "rope"]), "norm": st.sampled_from(NORMS),
    "mlp": st.sampled_from(MLPS), "attention": st.sampled_from(["reference", "sdpa"]),
    "B": st.integers(2, 4), "T": st.integers(2, 16), "seed": st.integers(0, 2**16),
})


def model_for(s) -> GPT:
    torch.manual_seed(s["seed"])
    return GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=s["n_layer"], n_head=s["n_head"], n_embd=8 * s["n_head"],
                           n_kv_head=s["n_head"] // s["kv_group"], position=s["position"], norm=s["norm"],
                           mlp=s["mlp"], attention=s["attention"], mlp_hidden=24))


def assert_grads_close(shared, plain):
    """fp32 gradients summed in another order (the prefix's over the rows it was broadcast to):
    close relative to each gradient's largest entry."""
    for g_shared, g_plain in zip(shared, plain):
        torch.testing.assert_close(g_shared, g_plain, rtol=1e-4, atol=1e-5 * max(1.0, g_plain.abs().max().item()))


def batch_with_prefix(s, n: int) -> torch.Tensor:
    """(B, T) ids whose rows agree on their first n tokens (and may agree further by chance)."""
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    idx[:, :n] = idx[0, :n].clone()
    return idx


@given(shapes, st.data())
def test_shared_prefix_gives_the_same_logits_and_gradients(s, data):
    model = model_for(s).train()
    idx = batch_with_prefix(s, data.draw(st.integers(0, s["T"]), label="n"))
    weights = torch.randn(s["B"], s["T"], 50, generator=torch.Generator().manual_seed(1))
    grads = []
    for share in (False, True):
        model.zero_grad()
        logits = model(idx, shared_prefix=shared_prefix_length(idx) if share else 0)
        (logits * weights).sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (shared, shared_grads) = grads
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    assert_grads_close(shared_grads, plain_grads)


@given(shapes, st.data())
def test_shared_prefix_under_lora_trains_the_same_adapters(s, data):
    s = {**s, "position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    model = lora.apply_lora(model_for(s), r=4, alpha=8.0)
    for module in model.modules():  # B starts at zero: make the adapters matter
        if isinstance(module, lora.LoRALinear):
            torch.nn.init.normal_(module.lora_B, std=0.1)
    idx = batch_with_prefix(s, data.draw(st.integers(1, s["T"]), label="n"))
    grads = []
    for share in (False, True):
        model.zero_grad()
        hidden = model(idx, return_hidden=True, shared_prefix=shared_prefix_length(idx) if share else 0)
        hidden[:, -1].square().sum().backward()  # a loss at the rows' last tokens only, as in SFT
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert_grads_close(grads[1], grads[0])


@given(st.integers(1, 4), st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**16))
def test_shared_prefix_length_is_the_longest_common_start(B, T, n, seed):
    idx = torch.randint(0, 3, (B, T), generator=torch.Generator().manual_seed(seed))
    idx[:, :n] = idx[0, :n].clone()
    length = shared_prefix_length(idx, min_saving=0)
    if B == 1:
        assert length == 0
        return
    assert length <= T - 1  # every row keeps a token of its own
    assert (idx[:, :length] == idx[:1, :length]).all()
    assert length >= min(n, T - 1)
    if length < T - 1:  # maximal: the next column differs somewhere
        assert not (idx[:, length] == idx[0, length]).all()
    # the trainer shares only a start worth a second pass: a tenth of the positions saved or more
    worth = (B - 1) * length >= 0.1 * B * T
    assert SHARE_MIN_SAVING == 0.1
    assert shared_prefix_length(idx, SHARE_MIN_SAVING) == (length if worth else 0)


def test_a_fine_tuning_step_is_the_same_with_and_without_the_shared_prefix():
    """Two trainers from the same weights, one running the shared start once (the default) and one
    made to run every row whole: the same loss, and the same weights after a step."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_kv_head=1, n_embd=16,
                         position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=24)
    idx = torch.randint(0, 40, (4, 20))
    idx[:, :8] = idx[0, :8]  # the "system turn"
    mask = torch.zeros_like(idx)
    mask[:, 12:] = 1  # the "answer"
    batch = Batch(idx, torch.roll(idx, -1, dims=1), mask)
    schedule = TrainSettings(stage="finetune", max_iters=1, lr=1e-2, min_lr=1e-2, warmup_iters=0, batch_size=4,
                        grad_accum=1, eval_interval=1, log_interval=1, normalize="sequence")
    start = {k: v.clone() for k, v in lora.apply_lora(GPT(config), r=4, alpha=8.0).state_dict().items()}
    results = []
    for share_prefix in (True, False):
        model = lora.apply_lora(GPT(config), r=4, alpha=8.0)
        model.load_state_dict(start)
        trainer = Trainer(model, schedule, lambda step, micro: batch, lambda m: {}, lambda *a: None, "/nonexistent",
                          share_prefix=share_prefix, log=lambda *_: None)
        loss, _, tokens = trainer.train_step(0)
        results.append((loss, tokens, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_shared, tokens_shared, after_shared), (loss_plain, tokens_plain, after_plain) = results
    assert abs(loss_shared - loss_plain) < 1e-5 * abs(loss_plain)
    assert (tokens_shared, tokens_plain) == (4 * 20 - 3 * 8, 4 * 20)  # positions computed
    for name in after_plain:
        torch.testing.assert_close(after_shared[name], after_plain[name], rtol=1e-4, atol=1e-6)


def test_fine_tuning_shares_the_start_only_without_noise():
    """Under NEFTune (or dropout) each row must draw its own noise, which one computed start cannot:
    the shared start gives every row the same noisy prefix, so the finetune stage turns it off."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, block_size=24, n_layer=1, n_head=2, n_embd=16, position="rope")
    model = GPT(config).train()
    add_embedding_noise(model, alpha=50.0)
    idx = torch.randint(0, 40, (3, 20))
    idx[:] = idx[0]  # identical rows: only the noise can tell them apart
    n = shared_prefix_length(idx)
    assert n > 0
    shared = model(idx, return_hidden=True, shared_prefix=n)
    plain = model(idx, return_hidden=True)
    assert torch.equal(shared[0, :n], shared[1, :n])  # one draw for the shared start
    assert not torch.allclose(plain[0], plain[1])  # a draw per row
    preset = PRESETS["smollm2"]
    assert finetune_is_noiseless(preset)
    for noisy in (replace(preset, ft_neftune_alpha=5.0), replace(preset, lora_dropout=0.1),
                  replace(preset, model=replace(preset.model, dropout=0.1))):
        assert not finetune_is_noiseless(noisy)
