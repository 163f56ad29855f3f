"""The multi-step families, gathered: every family whose reference solution needs 3 to 15 lines.

The one-line families (catalog.py, catalog_lists.py, compose.py) teach the shape of an answer but
not how to write a loop: fine-tuned on them alone, a model answered multi-step requests with a
wrong one-liner (issue 33). These families need an accumulator, an early exit, nested loops, a
dictionary or a string built up, index arithmetic or a small recursion. They have a held-out
split of their own, `test_steps` (their held-out phrasings, fresh names and constants), and reach
train and valid only when asked: `generate_suite(steps_weight=...)`, RunConfig.task_steps_weight.
"""
from __future__ import annotations

from .family import Family
from .steps_counting import COUNTING_STEP_FAMILIES
from .steps_grids import GRID_STEP_FAMILIES
from .steps_lists import LIST_STEP_FAMILIES
from .steps_numbers import NUMBER_STEP_FAMILIES
from .steps_sequences import SEQUENCE_STEP_FAMILIES
from .steps_strings import STRING_STEP_FAMILIES

STEP_FAMILIES: tuple[Family, ...] = (LIST_STEP_FAMILIES + SEQUENCE_STEP_FAMILIES + STRING_STEP_FAMILIES
                                     + COUNTING_STEP_FAMILIES + NUMBER_STEP_FAMILIES + GRID_STEP_FAMILIES)
STEP_FAMILY_NAMES = frozenset(family.name for family in STEP_FAMILIES)
