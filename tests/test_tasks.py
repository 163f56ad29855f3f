"""Tests for minilm.data.tasks: references pass, bugs fail, held-out splits are held out, files round-trip."""
import ast
import json
import random
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilm.data.tasks import (FAMILIES, KINDS, SPLITS, SuiteError, TaskFormatError, check_suite, explain_f1,
                          generate_suite, held_out_pairs, load_jsonl, plant_bug, prompt_key, save_jsonl)
from minilm.data.tasks.__main__ import main
from minilm.data.tasks.compose import ALL_PAIRS, COMPOSE_FAMILIES, EXPRESSIONS, PREDICATES, composition
from minilm.data.tasks.family import FRAMES, SEEN_FRAMES, TRAIN_ONLY_FRAMES, Raw, instantiate, template_parts
from minilm.data.tasks.suite import FAMILY_BY_NAME, ONE_STEP_FAMILIES, training_weight

from sandbox_helpers import run_tests

SMALL = dict(n_train=1200, n_valid=60, n_test=80)


@pytest.fixture(scope="module")
def suite():
    return generate_suite(seed=0, **SMALL)




def all_records(suite):
    return [record for split in SPLITS for record in suite[split]]


# ---- the catalogue ----

def test_at_least_40_families_with_4_templates_each_and_4_seen_in_training():
    assert len(FAMILIES) >= 40
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    for family in FAMILIES:
        assert len(family.templates()) >= 4 and len(family.seen_templates()) >= 4, family.name
        assert set(family.held_out_templates()).isdisjoint(family.seen_templates())
    categories = {f.category for f in FAMILIES}
    assert {"arithmetic", "comparison", "string", "list", "dict", "compose"} <= categories


def test_held_out_frames_keep_their_wording_and_training_only_frames_stay_out_of_the_tests():
    def trigrams(frame):
        words = re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "|", frame.lower()).replace("|", " | "))
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
    held_out = [i for i in range(len(FRAMES)) if i not in SEEN_FRAMES]
    for i in held_out:
        for j in SEEN_FRAMES:
            assert not trigrams(FRAMES[i]) & trigrams(FRAMES[j]), (FRAMES[i], FRAMES[j])
    assert set(TRAIN_ONLY_FRAMES) <= set(SEEN_FRAMES)
    for family in FAMILIES:
        used_frames = {template_parts(t)[0] for t in family.held_out_templates()}
        assert used_frames.isdisjoint(TRAIN_ONLY_FRAMES) and set(held_out) <= used_frames


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_template_renders_a_correct_canonical_task(family):
    rng = random.Random(family.name)
    for template in family.templates():
        instance = instantiate(family, rng, template)
        assert run_tests(instance.code, instance.test_list), (instance.code, instance.test_list)
        # Canonical: exactly what ast.unparse prints, so a mutation changes nothing but the bug.
        assert ast.unparse(ast.parse(instance.code)) == instance.code
        assert "while" not in instance.code   # mutants run in-process: no loop may spin forever
        assert "{" not in instance.text and "}" not in instance.text, instance.text   # no slot left unfilled
        # The description states every slot the code needs: function, arguments, constants.
        words = set(re.findall(r"\w+", instance.text))
        assert instance.entry_point in words and set(instance.arg_names) <= words, instance.text
        for key, value in instance.env.items():
            if not key.startswith("_") and not isinstance(value, Raw):   # Raw: code fragments and phrases
                assert repr(value) in instance.text, (key, instance.text)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tests_cover_edge_cases(family):
    instance = instantiate(family, random.Random(1), family.seen_templates()[0])
    calls = " ".join(instance.test_list)
    first_type = family.args[0][1]
    f = instance.entry_point
    if first_type == "list":
        assert f"{f}([]" in calls
    elif first_type == "str":
        assert f"{f}(''" in calls
    elif first_type in ("strlist", "matrix"):
        assert f"{f}([]" in calls
    elif first_type == "dict":
        assert f"{f}({{}}" in calls
    else:
        assert f"{f}(0" in calls
        if family.name not in ("factorial", "gcd"):   # defined on non-negative integers only
            assert re.search(rf"{f}\((.*, )?-\d", calls), calls
    assert len(instance.test_list) >= 3


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_admits_a_bug_that_its_tests_catch(family):
    rng = random.Random(family.name)
    instance = instantiate(family, rng, family.seen_templates()[0])
    buggy, kind = plant_bug(instance.code, instance.test_list, rng)
    assert not run_tests(buggy, instance.test_list)
    before, after = instance.code.split("\n"), buggy.split("\n")
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1   # one-line edit
    assert kind in {"off_by_one", "wrong_operator", "wrong_comparison", "wrong_call", "wrong_return"}


# ---- the suite ----

def test_every_reference_passes_and_every_buggy_variant_fails(suite):
    for record in all_records(suite):
        assert run_tests(record["code"], record["test_list"]), record["task_id"]
        if record["kind"] == "repair":
            assert record["buggy_code"] != record["code"]
            assert not run_tests(record["buggy_code"], record["test_list"]), record["task_id"]


def test_split_sizes_kinds_and_metadata(suite):
    sizes = {"train": SMALL["n_train"], "valid": SMALL["n_valid"]}
    for split in SPLITS:
        records = suite[split]
        assert len(records) == sizes.get(split, SMALL["n_test"])
        assert {r["kind"] for r in records} == set(KINDS), split
        assert all(r["split"] == split for r in records)
        assert len({r["task_id"] for r in records}) == len(records)
    for record in all_records(suite):
        assert ("buggy_code" in record) == (record["kind"] == "repair")
        assert record["entry_point"] in record["text"] and f"def {record['entry_point']}(" in record["code"]
        if record["family"] in {f.name for f in COMPOSE_FAMILIES}:
            assert len(record["parts"]) == 3


@settings(max_examples=10)
@given(seed=st.integers(0, 10**6))
def test_held_out_splits_are_held_out(seed):
    suite = generate_suite(seed=seed, n_train=300, n_valid=20, n_test=30, check=False)
    family = {f.name: f for f in FAMILIES}
    train_templates = {(r["family"], r["template"]) for r in suite["train"]}
    for record in suite["test_phrasing"]:
        assert record["template"] in family[record["family"]].held_out_templates()
        assert (record["family"], record["template"]) not in train_templates
    for split in ("train", "valid", "test_seen", "test_compose"):
        for record in suite[split]:
            assert record["template"] in family[record["family"]].seen_templates()
    held = held_out_pairs(seed)
    train_pairs = {composition(r) for r in suite["train"]} - {None}
    assert all(composition(r) in held for r in suite["test_compose"])
    assert train_pairs.isdisjoint(held)
    # ... while every part of a held-out pair keeps training pairs of its own
    kept = set(ALL_PAIRS) - held
    assert {p for p, _ in kept} == set(PREDICATES) and {e for _, e in kept} == set(EXPRESSIONS)
    keys = [prompt_key(r) for r in all_records(suite)]
    assert len(keys) == len(set(keys))   # no prompt in two splits (nor twice in one)
    check_suite(suite, run=False)


def test_every_part_of_a_test_compose_pair_is_seen_in_train(suite):
    train_pairs = {composition(r) for r in suite["train"]} - {None}
    for pred, expr in {composition(r) for r in suite["test_compose"]}:
        assert any(p == pred for p, _ in train_pairs) and any(e == expr for _, e in train_pairs)


def test_check_suite_catches_a_leak(suite):
    leaked = {split: list(records) for split, records in suite.items()}
    leaked["train"] = leaked["train"] + [dict(suite["test_phrasing"][0], split="train")]
    with pytest.raises(SuiteError, match="same prompt"):
        check_suite(leaked, run=False)
    broken = {split: list(records) for split, records in suite.items()}
    repair = next(r for r in suite["valid"] if r["kind"] == "repair")
    broken["valid"] = [dict(repair, buggy_code=repair["code"]) if r is repair else r for r in broken["valid"]]
    with pytest.raises(SuiteError, match="buggy code passes"):
        check_suite(broken)


@settings(max_examples=5)
@given(seed=st.integers(0, 10**6))
def test_same_seed_same_suite_different_seed_different_tasks(seed):
    small = dict(n_train=60, n_valid=10, n_test=10, check=False)
    first, again = generate_suite(seed=seed, **small), generate_suite(seed=seed, **small)
    assert first == again
    other = generate_suite(seed=seed + 1, **small)
    for split in SPLITS:
        assert [r["text"] for r in first[split]] != [r["text"] for r in other[split]]


def test_test_splits_do_not_depend_on_train_size():
    a = generate_suite(seed=5, n_train=50, n_valid=10, n_test=20, check=False)
    b = generate_suite(seed=5, n_train=150, n_valid=10, n_test=20, check=False)
    for split in ("valid", "test_seen", "test_phrasing", "test_compose"):
        assert a[split] == b[split]


def test_train_leans_toward_multi_argument_families_and_the_test_splits_do_not(suite):
    """training_weight draws 2- and 3-argument families more often in train (copying an argument list
    is what they teach); the test splits draw families uniformly."""
    composing = {f.name for f in COMPOSE_FAMILIES}   # pair families have their own weight; skip them
    plain = [f for f in ONE_STEP_FAMILIES if f.name not in composing]   # multi-step ones: tests/test_tasks_steps.py

    def share(records, n_args):
        kept = [r for r in records if r["family"] not in composing]
        return sum(len(FAMILY_BY_NAME[r["family"]].args) == n_args for r in kept) / len(kept)

    def uniform(n_args):
        return sum(len(f.args) == n_args for f in plain) / len(plain)

    assert all(training_weight(f) == 1.0 for f in plain if len(f.args) == 1)
    for n_args in (2, 3):
        assert all(training_weight(f) > 1 for f in plain if len(f.args) == n_args)
        assert share(suite["train"], n_args) > 1.5 * uniform(n_args)
    tests = generate_suite(seed=0, n_train=0, n_valid=0, n_test=2000, check=False)
    for n_args in (1, 2, 3):
        assert abs(share(tests["test_seen"], n_args) - uniform(n_args)) < 0.03


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind_weights"):
        generate_suite(kind_weights={"translate": 1.0})
    with pytest.raises(ValueError, match="n_train"):
        generate_suite(n_train=-1)


# ---- explain scoring ----

def test_reference_description_scores_perfectly_and_frame_words_do_not_count(suite):
    for record in suite["test_seen"][:50]:
        assert explain_f1(record["text"], record) == (1.0, 1.0, 1.0)
        body = record["text"].split(" returns ", 1)[-1]
        padded = "Write a Python function named it that takes and returns " + body
        assert explain_f1(padded, record) == explain_f1(body, record)
    record = suite["test_seen"][0]
    assert explain_f1("", record) == (0.0, 0.0, 0.0)
    p, r, f1 = explain_f1(record["text"] + " banana kiwi", record)
    assert r == 1.0 and p < 1.0 and 0 < f1 < 1


@given(words=st.lists(st.sampled_from(["sum", "odd", "squared", "xs", "total", "banana", "the", "of", "7"]),
                      max_size=12), index=st.integers(0, 79))
def test_explain_scores_are_probabilities_with_f1_their_harmonic_mean(suite, words, index):
    record = suite["test_compose"][index]
    p, r, f1 = explain_f1(" ".join(words), record)
    assert 0 <= p <= 1 and 0 <= r <= 1 and 0 <= f1 <= 1
    assert f1 == pytest.approx(0 if p + r == 0 else 2 * p * r / (p + r))


# ---- files ----

def test_jsonl_round_trip_is_exact(suite, tmp_path):
    path = tmp_path / "valid.jsonl"
    save_jsonl(suite["valid"], path)
    loaded = load_jsonl(path)
    assert loaded == suite["valid"]
    again = tmp_path / "again.jsonl"
    save_jsonl(loaded, again)
    assert again.read_bytes() == path.read_bytes()


def test_user_tasks_in_mbpp_form_load(tmp_path):
    mbpp = {"task_id": 11, "text": "Write a function to add.", "code": "def add(a, b):\n    return a + b",
            "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(mbpp) + "\n\n")
    assert load_jsonl(path) == [mbpp]


@pytest.mark.parametrize("bad_line, message", [
    ('{"task_id": "t1", "text": "x"', "invalid JSON"),
    ('["not", "an", "object"]', "JSON object"),
    ('{"task_id": "t1", "text": "x", "code": "pass"}', "test_list"),
    ('{"task_id": "t1", "text": "x", "code": "pass", "test_list": "assert 1"}', "list of strings"),
    ('{"task_id": "t1", "text": "x", "code": "pass", "test_list": [], "kind": "repair"}', "buggy_code"),
    ('{"task_id": "t1", "text": "x", "code": "pass", "test_list": [], "kind": "poem"}', "kind"),
    ('{"task_id": "t1", "text": "x", "code": "pass", "test_list": []}', "test_list has no test"),
    ('{"task_id": "t1", "text": "x", "code": "pass", "test_list": [" "], "kind": "repair", '
     '"buggy_code": "pass"}', "test_list has no test"),
])
def test_malformed_line_is_refused_naming_file_and_line_or_skipped(tmp_path, bad_line, message):
    good = {"task_id": "t0", "text": "t", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"]}
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(good) + "\n" + bad_line + "\n" + json.dumps(good) + "\n")
    with pytest.raises(TaskFormatError, match=rf"tasks\.jsonl:2: .*{message}"):
        load_jsonl(path)
    with pytest.warns(UserWarning, match=r"tasks\.jsonl:2"):
        assert load_jsonl(path, on_error="skip") == [good, good]


def test_a_line_over_the_size_limit_is_refused_naming_file_line_and_limit(tmp_path):
    good = {"task_id": "t0", "text": "t", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"]}
    huge = {**good, "text": "x" * 3_000_000}  # valid JSON: only its size is wrong
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in (good, huge, good)) + "\n")
    with pytest.raises(TaskFormatError, match=r"tasks\.jsonl:2: line longer than 1048576 bytes"):
        load_jsonl(path)
    with pytest.warns(UserWarning, match=r"tasks\.jsonl:2"):
        assert load_jsonl(path, on_error="skip") == [good, good]
    assert load_jsonl(path, max_line_bytes=4_000_000) == [good, huge, good]


def test_a_huge_line_is_never_held_in_memory_whole(tmp_path):
    # a 200 MB line once took 18 GB to parse; here 50 MB, read in pieces of at most 1 MiB + 64 KiB
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write('{"task_id": "t0", "text": "' + "x" * 50_000_000 + '"}\n')
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match="longer than"):
            assert load_jsonl(path, on_error="skip") == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 2**20:.0f} MiB at the peak"


def test_save_refuses_an_invalid_record_before_writing(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(TaskFormatError, match="record 2"):
        save_jsonl([{"task_id": 1, "text": "", "code": "", "test_list": ["assert True"]}, {"task_id": 2}], path)
    assert not path.exists()


def test_command_line_writes_one_file_per_split(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--seed", "1", "--n-train", "40", "--n-valid", "10", "--n-test", "10"]) == 0
    printed = capsys.readouterr().out
    for split in SPLITS:
        records = load_jsonl(tmp_path / f"{split}.jsonl")
        assert len(records) == (40 if split == "train" else 10)
        assert re.search(rf"{split}\s+{len(records)} tasks", printed)
