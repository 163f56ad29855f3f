"""Command-line configuration: presets, typed overrides, and one-line errors for bad input."""
import dataclasses

import pytest
from hypothesis import given, strategies as st

from minilm.config_checks import RANGES
from minilm.config import (PRESETS, ConfigError, ModelConfig, RunConfig, apply_overrides, from_dict,
                           load_config, to_dict)


def test_presets_exist_and_are_consistent():
    assert {"tiny", "small", "gpt2"} <= set(PRESETS)
    gpt2 = PRESETS["gpt2"].model
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.block_size) == (12, 12, 768, 1024)
    for preset in PRESETS.values():
        assert preset.model.n_embd % preset.model.n_head == 0


def test_overrides_land_with_the_right_types():
    config, options = load_config(
        ["--config", "tiny", "--max_iters", "200", "--lr=3e-4", "--n_layer", "3", "--compile",
         "--corpus", "none", "--bias", "false", "--out_dir", "x", "--stage", "pretrain", "--resume"],
        options={"stage": "all", "resume": False})
    assert config.max_iters == 200 and isinstance(config.max_iters, int)
    assert config.lr == 3e-4 and isinstance(config.lr, float)
    assert config.model.n_layer == 3 and config.model.bias is False
    assert config.compile is True and config.corpus is None and config.out_dir == "x"
    assert options == {"stage": "pretrain", "resume": True}
    assert config.model.n_embd == PRESETS["tiny"].model.n_embd  # untouched fields keep the preset's value


def test_default_preset_and_untouched_options():
    config, options = load_config([], options={"stage": "all", "resume": False})
    assert config == PRESETS["small"] and options == {"stage": "all", "resume": False}


@pytest.mark.parametrize("argv, message", [
    (["--config", "huge"], "unknown config 'huge'; presets: tiny, small"),
    (["--max_iter", "5"], "unknown option --max_iter (did you mean --max_iters?)"),
    (["--max_iters", "lots"], "--max_iters expects int, got 'lots'"),
    (["--lr", "fast"], "--lr expects float, got 'fast'"),
    (["--compile", "maybe"], "--compile expects bool, got 'maybe'"),
    (["small"], "unexpected argument 'small'"),
    (["--n_head", "5"], "n_embd (192) must be divisible by n_head (5)"),
    (["--attention", "magic"], "--attention must be one of auto, sdpa, reference, got 'magic'"),
    (["--lr"], "--lr needs a value (float)"),
    (["--lr", "true"], "--lr expects float, got 'true'"),  # a typed "true" is a value, not a bare key
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--lr", "nan"], "--lr must be a number, got nan"),
    (["--n_head", "0"], "--n_head must be between 1 and 1024, got 0"),
    (["--dropout", "2"], "--dropout must be at least 0 and below 1, got 2.0"),
    (["--block_size", "1000000000"], "--block_size must be between 1 and 131072"),
    (["--max_iters", "-5"], "--max_iters must be between 1 and"),
    (["--vocab_size", "100"], "--vocab_size must be at least 261 to train a tokenizer"),
    (["--finetune", "bogus"], "--finetune must be one of lora, full, top_k, lora+top_k, got 'bogus'"),
    (["--dtype", "float16x"], "--dtype must be one of auto, fast"),
])
def test_bad_input_gives_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as error:
        load_config(argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*batch_size.*n_layer"):
        apply_overrides(PRESETS["tiny"], {"nope": "1"})


@given(st.sampled_from(sorted(PRESETS)), st.integers(1, 10**6), st.floats(1e-6, 1.0))
def test_dict_round_trip(name, iters, lr):
    config = dataclasses.replace(PRESETS[name], max_iters=iters, lr=lr)
    assert from_dict(to_dict(config)) == config


def test_from_dict_ignores_unknown_keys():
    data = to_dict(RunConfig())
    data["from_the_future"] = 1
    data["model"]["also_new"] = 2
    assert from_dict(data) == RunConfig(model=ModelConfig())


def test_the_choices_are_what_the_code_builds():
    """config.py lists each string field's values itself (it imports nothing): they must agree."""
    from minilm.config_checks import CHOICES, SPECIAL_TOKEN_COUNT
    from minilm.data.sft import SPECIAL_TOKENS
    from minilm.training.early_stopping import MAXIMIZED_METRICS
    from minilm.runtime import resolve_dtype
    import torch
    assert SPECIAL_TOKEN_COUNT == len(SPECIAL_TOKENS)
    assert set(MAXIMIZED_METRICS) <= set(CHOICES["ft_metric"])
    for name in CHOICES["dtype"]:
        resolve_dtype(name, torch.device("cpu"))  # raises on a name it does not know


@given(st.sampled_from(sorted(RANGES)), st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True)))
def test_every_numeric_field_is_checked_against_its_range(name, value):
    """A value outside a field's range is refused in one line naming the key; one inside passes
    the range check (it may still fail a check across fields)."""
    low, high = RANGES[name]
    in_model = name in {f.name for f in dataclasses.fields(ModelConfig)}
    typ = type(getattr(ModelConfig() if in_model else RunConfig(), name))
    if typ is int and isinstance(value, float):
        return
    value = typ(value)  # an int for a float field becomes a float, as from the command line
    ok = value == value and low <= value <= high
    try:
        if in_model:
            ModelConfig(**{name: value})
        else:
            RunConfig(**{name: value})
    except ConfigError as error:
        assert "\n" not in str(error)
        assert ok or f"--{name} must" in str(error)
    else:
        assert ok
