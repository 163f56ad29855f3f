"""Contamination: does a text we evaluate on share a run of n words with what the model trained on?

    shared_ngrams({"requests/000": text}, training_texts, n=10)   # [(document id, n-gram), ...]

Words are runs of letters, digits and underscores, lower-cased (`words`), so the check needs no
trained tokenizer and reads prose and code alike: `for i in range(len(xs)):` is the words
for i in range len xs. A document and the training texts share an n-gram when n consecutive words
of the document occur consecutively in one training text.

n: GPT-3's check (Brown et al. 2020) used 13. tests/test_contamination.py holds the task suite's
training data to 10 against the requests and HumanEval (prompts and canonical solutions); shorter
runs are stock phrases: the suite shares "that takes an integer a and returns true if" (9 words)
with HumanEval/77 without having seen it.

The training side is a set of hashed n-grams (`ngram_index`): 24,000 tasks give about 200,000,
built in well under a second. Two n-grams with one hash could only add a false hit to look at,
never hide a true one. `shared_ngrams_reference` is the same question asked of the joined text.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator, Mapping, Sequence

from minilm.data.requests import load_requests
from minilm.evaluation.humaneval import load_problems

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    """Every run of n consecutive words of text, in order."""
    w = words(text)
    return (tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def ngram_index(texts: Iterable[str], n: int) -> set[int]:
    """The hashes of every n-gram of every text."""
    return {hash(gram) for text in texts for gram in word_ngrams(text, n)}


def shared_ngrams(documents: Mapping[str, str], texts: Iterable[str], n: int) -> list[tuple[str, str]]:
    """(document id, n-gram) for every run of n words of a document that occurs in one of texts."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    index = ngram_index(texts, n)
    return [(name, " ".join(gram)) for name, document in documents.items()
            for gram in word_ngrams(document, n) if hash(gram) in index]


def shared_ngrams_reference(documents: Mapping[str, str], texts: Sequence[str], n: int) -> list[tuple[str, str]]:
    """The same list, found by searching each text's words, space-joined, for each n-gram."""
    joined = [f" {' '.join(words(text))} " for text in texts]
    found = []
    for name, document in documents.items():
        w = words(document)
        for i in range(len(w) - n + 1):
            gram = " ".join(w[i:i + n])
            if any(f" {gram} " in text for text in joined):
                found.append((name, gram))
    return found


def evaluated_documents() -> dict[str, str]:
    """{name: text} of everything the eval stage scores that the task suite did not generate."""
    documents = {}
    for r in load_requests():
        documents[f"{r['task_id']} text"], documents[f"{r['task_id']} code"] = r["text"], r["code"]
    for p in load_problems():
        documents[f"{p['task_id']} prompt"] = p["prompt"]
        documents[f"{p['task_id']} canonical_solution"] = p["canonical_solution"]
    return documents
