"""A procedural suite of small Python programming tasks, in the spirit of MBPP.

    from minilm.data.tasks import generate_suite, save_jsonl, load_jsonl, explain_f1
    suite = generate_suite(seed=0)          # {"train": [...], "valid": [...], "test_seen": [...], ...}
    suite = generate_suite(seed=0, steps_weight=1.0)   # train and valid draw the multi-step families too

Modules, in reading order:
    family.py        a Family (canonical solution + oracle + what phrases) and how it is instantiated
    catalog.py       arithmetic, comparison and string families
    catalog_lists.py list and dictionary families
    compose.py       filter -> map -> reduce pipelines and the held-out compositions
    steps.py         the multi-step families (3-12 line solutions), gathered from steps_lists.py,
                     steps_sequences.py, steps_strings.py, steps_counting.py, steps_numbers.py, steps_grids.py
    bugs.py          repair tasks: one test-failing mutation of a reference solution
    explain.py       slot precision / recall / F1 for explain tasks
    suite.py         splits, records and the checks that the held-out splits are held out
    jsonl.py         the MBPP-like JSONL format, with line-numbered errors
Command line: python -m minilm.data.tasks --out DIR [--seed S]
"""
from .bugs import passes, plant_bug
from .compose import held_out_pairs
from .explain import explain_f1
from .family import FRAMES, SEEN_FRAMES, Family
from .jsonl import KINDS, TaskFormatError, load_jsonl, save_jsonl, validate_record
from .suite import (DEFAULT_KIND_WEIGHTS, FAMILIES, FAMILY_BY_NAME, SPLITS, SuiteError, check_record, check_suite,
                    generate_suite, heldout_fingerprint, prompt_key, suite_fingerprint)

__all__ = [
    "DEFAULT_KIND_WEIGHTS", "FAMILIES", "FAMILY_BY_NAME", "FRAMES", "Family", "KINDS", "SEEN_FRAMES", "SPLITS",
    "SuiteError", "TaskFormatError", "check_record", "check_suite", "explain_f1", "generate_suite",
    "heldout_fingerprint", "held_out_pairs", "load_jsonl", "passes", "plant_bug", "prompt_key", "save_jsonl", "suite_fingerprint",
    "validate_record",
]
