"""Command-line configuration: presets, typed overrides, and one-line errors for bad input."""
import dataclasses

import pytest
from hypothesis import given, strategies as st

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
    (["--attention", "magic"], "attention must be 'auto', 'sdpa' or 'reference'"),
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
