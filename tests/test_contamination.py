"""No training example shares 10 words in a row with what we evaluate on: the requests (text and
reference code) and HumanEval (prompts and canonical solutions). And the check itself: its hashed
index finds what a plain text search finds, and a planted sentence is found."""
import random
import time

import pytest
from hypothesis import given, strategies as st

from minilm.config import PRESETS
from minilm.data.requests import load_requests
from minilm.data.tasks import generate_suite
from minilm.data.tasks.family import instantiate
from minilm.data.tasks.steps import STEP_FAMILIES
from minilm.evaluation.contamination import (evaluated_documents, shared_ngrams, shared_ngrams_reference, words,
                                             word_ngrams)

N = 10  # words in a row (minilm/evaluation/contamination.py says why not fewer)


def training_texts(suite: dict) -> list[str]:
    """What fine-tuning shows the model: each train and valid task's text and code (and the buggy
    code a repair task's prompt holds)."""
    return [record[field] for split in ("train", "valid") for record in suite[split]
            for field in ("text", "code", "buggy_code") if field in record]


@pytest.fixture(scope="module")
def training_suites() -> dict:
    """{(task_seed, task_steps_weight, task_train_size): suite} for the largest train split of each
    seed and multi-step weight the presets use (24,000 tasks for small). A split is one random
    stream, so a smaller task_train_size is a prefix of a larger one
    (test_a_smaller_train_split_is_a_prefix_of_a_larger_one)."""
    largest = {}
    for cfg in PRESETS.values():
        key = (cfg.task_seed, cfg.task_steps_weight)
        largest[key] = max(largest.get(key, 0), cfg.task_train_size)
    return {(seed, weight, n): generate_suite(seed=seed, n_train=n, check=False, steps_weight=weight)
            for (seed, weight), n in largest.items()}


@pytest.fixture(scope="module")
def evaluated() -> dict[str, str]:
    return evaluated_documents()


def test_a_smaller_train_split_is_a_prefix_of_a_larger_one(training_suites):
    for (seed, weight, n), suite in training_suites.items():
        assert len(suite["train"]) == n
        smaller = generate_suite(seed=seed, n_train=200, check=False, steps_weight=weight)
        assert smaller["train"] == suite["train"][:200] and smaller["valid"] == suite["valid"]


def test_no_training_example_shares_ten_words_with_a_request_or_humaneval(training_suites, evaluated):
    for (seed, weight, n), suite in training_suites.items():
        start = time.perf_counter()
        found = shared_ngrams(evaluated, training_texts(suite), N)
        print(f"\n{len(evaluated)} texts against {n} + {len(suite['valid'])} tasks (seed {seed}) "
              f"in {time.perf_counter() - start:.2f} s")
        assert found == []


def test_no_multi_step_task_shares_ten_words_with_a_request_or_humaneval(evaluated):
    """The multi-step families reach training only with task_steps_weight > 0 (no preset sets it),
    so the suites above do not hold them: check every template of each, with a few draws of names
    and constants, and the training split of a suite that does draw them."""
    texts = []
    for family in STEP_FAMILIES:
        for seed in range(3):
            rng = random.Random(seed)
            for template in family.templates():
                instance = instantiate(family, rng, template)
                texts += [instance.text, instance.code]
    texts += training_texts(generate_suite(seed=0, n_train=3000, check=False, steps_weight=1.0))
    assert shared_ngrams(evaluated, texts, N) == []


def test_a_planted_sentence_is_found(evaluated):
    request = load_requests()[0]
    ten_words = " ".join(words(request["text"])[3:3 + N])
    humaneval_sentence = ("Check if in given list of numbers, are any two numbers closer to each other "
                          "than given threshold.")
    found = shared_ngrams(evaluated, ["def f(x):\n    return x\n", f"# {ten_words.upper()}!",
                                      humaneval_sentence], N)
    assert {name for name, _ in found} == {f"{request['task_id']} text", "HumanEval/0 prompt"}
    assert (f"{request['task_id']} text", ten_words) in found


vocabulary = st.sampled_from(["a", "b", "c", "Def", "x_1"])
passages = st.lists(vocabulary, max_size=12).map(" ".join)


@given(st.dictionaries(st.sampled_from(["p", "q", "r"]), passages), st.lists(passages, max_size=4),
       st.integers(1, 4))
def test_the_hashed_index_finds_what_a_text_search_finds(documents, texts, n):
    assert shared_ngrams(documents, texts, n) == shared_ngrams_reference(documents, texts, n)


def test_words_read_code_and_prose_alike():
    assert words("for i in range(len(xs)):  # Each X") == ["for", "i", "in", "range", "len", "xs", "each", "x"]
    assert list(word_ngrams("a b c", 2)) == [("a", "b"), ("b", "c")] and list(word_ngrams("a", 2)) == []
