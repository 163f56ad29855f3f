"""The task suite: families x templates x kinds, split so that the held-out splits are held out.

Splits, each drawn from its own random stream `Random(f"{seed}:{split}")`:

    train, valid    seen templates, training compositions (pair families weighted up)
    test_seen       seen templates, new names and constants (no prompt that occurs in train)
    test_phrasing   templates never used in training (a held-out frame or a held-out what phrase)
    test_compose    (predicate, expression) pairs never used in training, seen templates
    test_steps      the multi-step families (steps.py) with templates never used in training

The multi-step families reach train and valid only with `steps_weight` > 0; at 0 (the default)
every other split is exactly what it was before they existed, since they are drawn in no other split.

Kinds: generate (text -> code), repair (text + buggy code -> code), explain (code -> text).
Held-out splits are generated first and training rejects any prompt they contain, so the test
sets do not change when `n_train` does. `check_suite` re-verifies every property from the records
alone; `generate_suite` runs it before returning.
"""
from __future__ import annotations

import functools
import hashlib
import json
import random

from .bugs import passes, plant_bug
from .catalog import SCALAR_FAMILIES
from .catalog_lists import LIST_FAMILIES
from .compose import COMPOSE_FAMILIES, PAIR_FAMILIES, composition, held_out_pairs
from .explain import slot_words
from .family import Family, instantiate
from .jsonl import KINDS
from .steps import STEP_FAMILIES, STEP_FAMILY_NAMES

ONE_STEP_FAMILIES: tuple[Family, ...] = SCALAR_FAMILIES + LIST_FAMILIES + COMPOSE_FAMILIES
FAMILIES: tuple[Family, ...] = ONE_STEP_FAMILIES + STEP_FAMILIES
FAMILY_BY_NAME = {family.name: family for family in FAMILIES}
SPLITS = ("train", "valid", "test_seen", "test_phrasing", "test_compose", "test_steps")
DEFAULT_KIND_WEIGHTS = {"generate": 0.6, "repair": 0.2, "explain": 0.2}
# train and valid draw the two pair families (predicate x expression) this many times as often as
# any other: they are the only families that teach the filter-then-map shape test_compose asks for,
# and at weight 1 they were 2 of 63 families (about 190 of 6,000 training tasks). The test splits
# draw families uniformly.
PAIR_FAMILY_WEIGHT = 4.0
# ... and a family with several arguments this many times as often as a one-argument family: the
# model must copy the argument list in order from the prose ("an integer t and an integer m and an
# integer val" -> "(t, m, val)"), and at weight 1 the 2 three-argument families were 3% of training.
# Models trained so wrote "def f(t, val, val)": 0-1 of 7 three-argument test_seen tasks passed.
ARG_COUNT_WEIGHT = {1: 1.0, 2: 2.0, 3: 6.0}
INF = float("inf")


class SuiteError(ValueError):
    """A generated or loaded suite breaks one of its promises (leak, failing reference, ...)."""


def prompt_key(record: dict) -> tuple:
    """What the model sees for a record: two records with one key are the same test question."""
    if record["kind"] == "explain":
        return ("explain", record["code"])
    return (record["kind"], record["text"], record.get("buggy_code", ""))


def generate_suite(seed: int = 0, n_train: int = 6000, n_valid: int = 300, n_test: int = 300,
                   kind_weights: dict | None = None, check: bool = True,
                   steps_weight: float = 0.0) -> dict[str, list[dict]]:
    """Generate every split: {split: [record, ...]}. `n_test` is the size of each test split.

    Deterministic in its arguments. `check=True` runs every reference solution and buggy variant
    against its tests and verifies the splits are disjoint (about half the run time).
    `steps_weight` is how often train and valid draw a multi-step family (training_weight)."""
    weights = dict(DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights)
    if not weights or set(weights) - set(KINDS) or any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise ValueError(f"kind_weights must map some of {KINDS} to non-negative weights with a positive sum, "
                         f"got {kind_weights!r}")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if isinstance(steps_weight, bool) or not isinstance(steps_weight, (int, float)) or not 0 <= steps_weight < INF:
        raise ValueError(f"steps_weight must be a non-negative number, got {steps_weight!r}")
    held = held_out_pairs(seed)
    # Test splits first, so that train rejects their prompts; test_steps after the older test splits,
    # so that they come out as they did before it existed.
    sizes = {"test_compose": n_test, "test_phrasing": n_test, "test_seen": n_test, "test_steps": n_test,
             "valid": n_valid, "train": n_train}
    taken: set = set()
    suite = {split: _generate_split(split, size, seed, held, weights, taken, steps_weight)
             for split, size in sizes.items()}
    suite = {split: suite[split] for split in SPLITS}
    if check:
        check_suite(suite)
    return suite


@functools.lru_cache(maxsize=4)
def suite_fingerprint(seed: int = 0, n_train: int = 6000, steps_weight: float = 0.0) -> str:
    """SHA-256 of the suite for `seed` (default sizes but n_train and steps_weight): it changes
    whenever the generator's output does."""
    suite = generate_suite(seed=seed, n_train=n_train, check=False, steps_weight=steps_weight)
    return hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()


def heldout_fingerprint(seed: int = 0) -> str:
    """SHA-256 of the held-out splits alone (test_*): what evaluation reads. They are drawn before
    train and valid and do not depend on their sizes or weights."""
    suite = generate_suite(seed=seed, n_train=0, n_valid=0, check=False)
    return hashlib.sha256(json.dumps({s: suite[s] for s in suite if s.startswith("test")},
                                     sort_keys=True).encode()).hexdigest()


def training_weight(family: Family, steps_weight: float = 0.0) -> float:
    """How often train and valid draw `family`, relative to a one-argument one-step family: a
    multi-step family is drawn `steps_weight` times as often as a one-step family of its arity."""
    weight = (PAIR_FAMILY_WEIGHT if family.name in PAIR_FAMILIES else 1.0) * ARG_COUNT_WEIGHT[len(family.args)]
    return weight * steps_weight if family.name in STEP_FAMILY_NAMES else weight


def split_families(split: str, steps_weight: float = 0.0) -> tuple[Family, ...]:
    """The families a split draws from. The one-step test splits never hold a multi-step family,
    and train and valid only when they are weighted in (a list with weight-0 members would do,
    but leaving them out makes it plain that the older splits cannot change)."""
    if split == "test_compose":
        return tuple(f for f in ONE_STEP_FAMILIES if f.name in PAIR_FAMILIES)
    if split == "test_steps":
        return STEP_FAMILIES
    if split in ("train", "valid") and steps_weight > 0:
        return FAMILIES
    return ONE_STEP_FAMILIES


def _generate_split(split: str, size: int, seed: int, held: frozenset, weights: dict, taken: set,
                    steps_weight: float = 0.0) -> list[dict]:
    rng = random.Random(f"{seed}:{split}")
    families = split_families(split, steps_weight)
    weighted = split in ("train", "valid")
    family_weights = [training_weight(f, steps_weight) for f in families]
    kinds, kind_weights = zip(*weights.items())
    records: list[dict] = []
    attempts = 0
    while len(records) < size:
        attempts += 1
        if attempts > 20 * size + 100:
            raise SuiteError(f"could not draw {size} distinct {split} tasks; lower the size or change the seed")
        family = rng.choices(families, family_weights)[0] if weighted else rng.choice(families)
        held_out = split in ("test_phrasing", "test_steps")
        templates = family.held_out_templates() if held_out else family.seen_templates()
        env = family.consts(rng)
        pair = composition(env)
        if (pair in held) != (split == "test_compose"):
            continue   # held-out pairs only in test_compose, and test_compose only held-out pairs
        instance = instantiate(family, rng, rng.choice(templates), env)
        kind = rng.choices(kinds, kind_weights)[0]
        record = _record(instance, kind, split, f"{split}/{len(records)}")
        if kind == "repair":
            bug = plant_bug(instance.code, instance.test_list, rng)
            if bug is None:
                continue   # no mutation of this solution fails a test; draw another task
            record["buggy_code"], record["bug"] = bug
        key = prompt_key(record)
        if key in taken:
            continue
        taken.add(key)
        records.append(record)
    return records


def _record(instance, kind: str, split: str, task_id: str) -> dict:
    record = {
        "task_id": task_id, "text": instance.text, "code": instance.code, "test_list": list(instance.test_list),
        "kind": kind, "family": instance.family.name, "category": instance.family.category, "split": split,
        "entry_point": instance.entry_point, "template": instance.template,
        "slots": slot_words(instance.what, instance.entry_point, instance.arg_names),
    }
    if "_parts" in instance.env:
        record["parts"] = list(instance.env["_parts"])
    return record


def check_suite(suite: dict[str, list[dict]], run: bool = True) -> None:
    """Raise SuiteError unless: splits are disjoint by prompt; test_phrasing uses no training template;
    test_compose uses no training composition; test_steps holds only multi-step families, each with
    a held-out template that train does not use; and (with `run`) every reference solution passes
    its tests while every buggy variant fails one."""
    missing = set(SPLITS) - set(suite)
    if missing:
        raise SuiteError(f"suite lacks splits {sorted(missing)}; expected {SPLITS}")
    owner: dict = {}
    for split in SPLITS:
        for record in suite[split]:
            previous = owner.setdefault(prompt_key(record), split)
            if previous != split:
                raise SuiteError(f"{record['task_id']}: the same prompt appears in {previous} and {split}")
    train_templates = {(r["family"], r["template"]) for r in suite["train"]}
    for record in suite["test_phrasing"]:
        if (record["family"], record["template"]) in train_templates:
            raise SuiteError(f"{record['task_id']}: template {record['template']} of {record['family']} "
                             f"is also used in train")
    for record in suite["test_steps"]:
        family = FAMILY_BY_NAME.get(record["family"])
        if record["family"] not in STEP_FAMILY_NAMES or record["template"] not in family.held_out_templates():
            raise SuiteError(f"{record['task_id']}: {record['family']} with template {record['template']} is not "
                             f"a multi-step family with a held-out template")
        if (record["family"], record["template"]) in train_templates:
            raise SuiteError(f"{record['task_id']}: template {record['template']} of {record['family']} "
                             f"is also used in train")
    train_pairs = {composition(r) for r in suite["train"]} - {None}
    for record in suite["test_compose"]:
        if composition(record) is None or composition(record) in train_pairs:
            raise SuiteError(f"{record['task_id']}: composition {record.get('parts')} is not held out of train")
    if run:
        for split in SPLITS:
            for record in suite[split]:
                check_record(record)


def check_record(record: dict) -> None:
    """Raise SuiteError unless the reference passes its tests and any buggy code fails one."""
    if not passes(record["code"], record["test_list"]):
        raise SuiteError(f"{record['task_id']}: the reference solution fails its own tests")
    if "buggy_code" in record and passes(record["buggy_code"], record["test_list"]):
        raise SuiteError(f"{record['task_id']}: the buggy code passes every test, so it is not a repair task")
