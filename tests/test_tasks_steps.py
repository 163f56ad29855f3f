"""Tests for the multi-step families (minilm/data/tasks/steps*.py) and their held-out split, test_steps:
every reference passes its tests and no trivial one-liner does, test_steps is held out of train,
and with steps_weight 0 every older split is exactly what it was before the families existed."""
import ast
import dataclasses
import hashlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilm.config import PRESETS, ConfigError
from minilm.data.tasks import SuiteError, check_suite, generate_suite, prompt_key
from minilm.data.tasks import suite as suite_module
from minilm.data.tasks.family import instantiate
from minilm.data.tasks.steps import STEP_FAMILIES, STEP_FAMILY_NAMES
from minilm.data.tasks.suite import ONE_STEP_FAMILIES, training_weight
from minilm.stages.common import task_suite
from minilm.stages.reuse import stage_key

from sandbox_helpers import run_tests

OLDER_SPLITS = ("train", "valid", "test_seen", "test_phrasing", "test_compose")
SMALL = dict(n_train=600, n_valid=40, n_test=60)

# One-liners a model that has only seen one-line solutions writes: each must fail every family's tests.
STUBS = ("pass", "return {0}", "return None", "return 0", "return []", "return ''", "return True", "return False",
         "return sorted({0})", "return len({0})", "return {0}[::-1]", "return sum({0})", "return list({0})",
         "return max({0})", "return set({0})", "return {0} + {0}")




def older_splits_sha(suite) -> str:
    return hashlib.sha256(json.dumps({s: suite[s] for s in OLDER_SPLITS}, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def suites():
    """{steps_weight: suite} for the two settings: not in training, and drawn as often as a one-step family."""
    return {weight: generate_suite(seed=0, steps_weight=weight, **SMALL) for weight in (0.0, 1.0)}


# ---- the families ----

def test_at_least_40_multi_step_families_with_3_to_15_line_solutions_and_a_held_out_phrase():
    assert len(STEP_FAMILIES) >= 40 and len(STEP_FAMILY_NAMES) == len(STEP_FAMILIES)
    assert STEP_FAMILY_NAMES.isdisjoint(f.name for f in ONE_STEP_FAMILIES)
    for family in STEP_FAMILIES:
        assert 3 <= len(family.body.split("\n")) <= 15, family.name
        assert len(family.whats) >= 4, family.name   # three training phrases and the held-out one
        assert len(set(family.whats)) == len(family.whats), family.name


@pytest.mark.parametrize("family", STEP_FAMILIES, ids=lambda f: f.name)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 10**6))
def test_the_reference_passes_and_no_trivial_one_liner_does(family, seed, pick):
    templates = family.templates()
    instance = instantiate(family, random.Random(seed), templates[pick % len(templates)])
    assert run_tests(instance.code, instance.test_list), (instance.code, instance.test_list)
    assert len(instance.code.split("\n")) - 1 >= 3   # the body, without the def line
    assert ast.unparse(ast.parse(instance.code)) == instance.code and "while" not in instance.code
    header = instance.code.split("\n")[0]
    for stub in STUBS:
        one_liner = header + "\n    " + stub.format(instance.arg_names[0])
        assert not run_tests(one_liner, instance.test_list), (family.name, stub)


@pytest.mark.parametrize("family", STEP_FAMILIES, ids=lambda f: f.name)
def test_tests_hold_the_empty_input_and_one_element_or_zero_and_a_negative(family):
    instance = instantiate(family, random.Random(3), family.seen_templates()[0])
    firsts = [ast.literal_eval(ast.parse(test).body[0].test.left.args[0]) for test in instance.test_list]
    first_type = family.args[0][1]
    if first_type == "int":
        assert 0 in firsts and any(a < 0 for a in firsts), (family.name, firsts)
    else:
        assert any(len(a) == 0 for a in firsts), (family.name, firsts)
    if first_type in ("list", "strlist", "matrix", "dict"):
        assert any(len(a) == 1 for a in firsts), (family.name, firsts)


# ---- the test_steps split ----

def test_test_steps_holds_multi_step_families_with_held_out_templates_and_no_prompt_of_train(suites):
    for suite in suites.values():
        others = {prompt_key(r) for split in OLDER_SPLITS for r in suite[split]}
        train_templates = {(r["family"], r["template"]) for r in suite["train"]}
        records = suite["test_steps"]
        assert len(records) == SMALL["n_test"] and {r["kind"] for r in records} == {"generate", "repair", "explain"}
        assert len({r["family"] for r in records}) >= 30
        for record in records:
            family = suite_module.FAMILY_BY_NAME[record["family"]]
            assert record["family"] in STEP_FAMILY_NAMES and record["split"] == "test_steps"
            assert record["template"] in family.held_out_templates()
            assert (record["family"], record["template"]) not in train_templates
            assert prompt_key(record) not in others
            assert len(record["code"].split("\n")) - 1 >= 3
            if record["kind"] == "repair":
                assert not run_tests(record["buggy_code"], record["test_list"])


def test_with_weight_0_the_older_splits_are_unchanged(suites):
    """Pinned: the older splits of these two suites, generated at commit 0b97d8e (before the
    multi-step families), hashed. A change to a one-step family changes them too: then re-pin,
    saying why in the commit."""
    assert not any(r["family"] in STEP_FAMILY_NAMES for split in OLDER_SPLITS for r in suites[0.0][split])
    pinned = {0: "f50648228379d67912b36aba0ac2f974ed514c05d5f3cc00238eb215d78ef32b",
              7: "82800a5595ed2345374a64e592decde370b9ec1a17a9233365ac8b97e4ef830f"}
    for seed, sha in pinned.items():
        assert older_splits_sha(generate_suite(seed=seed, n_train=400, n_valid=40, n_test=40, check=False)) == sha


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10**6), kept=st.integers(1, 40))
def test_with_weight_0_the_older_splits_do_not_depend_on_the_multi_step_families(seed, kept):
    """The property behind the pin: drop most multi-step families, and at weight 0 only test_steps changes."""
    sizes = dict(n_train=150, n_valid=20, n_test=20, check=False)
    full = generate_suite(seed=seed, **sizes)
    with pytest.MonkeyPatch.context() as patch:
        fewer = STEP_FAMILIES[:kept]
        patch.setattr(suite_module, "STEP_FAMILIES", fewer)
        patch.setattr(suite_module, "STEP_FAMILY_NAMES", frozenset(f.name for f in fewer))
        patch.setattr(suite_module, "FAMILIES", ONE_STEP_FAMILIES + fewer)
        reduced = generate_suite(seed=seed, **sizes)
    assert {s: full[s] for s in OLDER_SPLITS} == {s: reduced[s] for s in OLDER_SPLITS}
    assert {r["family"] for r in reduced["test_steps"]} <= {f.name for f in fewer}


def test_with_weight_above_0_train_and_valid_hold_multi_step_tasks_and_the_test_splits_do_not_move(suites):
    weighted, plain = suites[1.0], suites[0.0]
    for split in ("train", "valid"):
        steps = [r for r in weighted[split] if r["family"] in STEP_FAMILY_NAMES]
        assert len(steps) > 0.2 * len(weighted[split]), split   # 56 families against 63 at equal weight
        for record in steps:
            assert record["template"] in suite_module.FAMILY_BY_NAME[record["family"]].seen_templates()
    assert len({r["family"] for r in weighted["train"] if r["family"] in STEP_FAMILY_NAMES}) >= 40
    assert any(r["kind"] == "repair" and r["family"] in STEP_FAMILY_NAMES for r in weighted["train"])
    for split in ("test_seen", "test_phrasing", "test_compose", "test_steps"):
        assert weighted[split] == plain[split], split


def test_training_weight_scales_only_the_multi_step_families():
    step, one_step = STEP_FAMILIES[0], suite_module.FAMILY_BY_NAME["list_sum"]
    assert training_weight(step) == 0.0 and training_weight(step, 2.0) == 2 * training_weight(step, 1.0) > 0
    assert training_weight(one_step) == training_weight(one_step, 3.0) == 1.0


def test_check_suite_catches_a_test_steps_task_that_is_not_held_out(suites):
    suite = suites[1.0]
    step_record = suite["test_steps"][0]
    leaked = dict(suite, train=suite["train"] + [dict(step_record, text=step_record["text"] + " Thanks.",
                                                       kind="generate", split="train")])
    with pytest.raises(SuiteError, match="also used in train"):
        check_suite(leaked, run=False)
    one_step = dict(suite["test_seen"][0], text=suite["test_seen"][0]["text"] + " Thanks.", kind="generate",
                    split="test_steps")
    with pytest.raises(SuiteError, match="not a multi-step family"):
        check_suite(dict(suite, test_steps=suite["test_steps"] + [one_step]), run=False)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_steps_weight_is_refused(weight):
    with pytest.raises(ValueError, match="steps_weight"):
        generate_suite(n_train=1, n_valid=0, n_test=0, steps_weight=weight)


# ---- the config field ----

def test_task_steps_weight_reaches_the_training_suite_and_the_stage_keys(tmp_path):
    tiny = dataclasses.replace(PRESETS["tiny"], out_dir=str(tmp_path / "run"), task_train_size=200)
    weighted = dataclasses.replace(tiny, task_steps_weight=1.0)
    assert all(cfg.task_steps_weight == 0.0 for cfg in PRESETS.values())   # no preset's measured numbers move
    assert not any(r["family"] in STEP_FAMILY_NAMES for r in task_suite(tiny)["train"])
    assert any(r["family"] in STEP_FAMILY_NAMES for r in task_suite(weighted)["train"])
    for stage in ("tokenizer", "finetune", "eval"):   # the weight is keyed through the suite's fingerprint
        assert (stage_key(tiny, stage) != stage_key(weighted, stage)) == (stage != "tokenizer"), stage
    with pytest.raises(ConfigError, match="task_steps_weight"):
        dataclasses.replace(tiny, task_steps_weight=-0.5)
