"""Multi-step grid families: lists of lists read with two indices, or built row by row.

A grid argument is a list of rows of integers (family.py's "matrix" type). The solutions nest one
loop in another and keep a row and a column index apart, which no one-line family shows. Tests hold
the empty grid, a single cell, one row, one column and non-square shapes where a family allows them.
"""
from __future__ import annotations

import random

from .family import Family, int_list, ints

G1 = (("g", "matrix"),)


def _grid(rng: random.Random, rows: int, cols: int) -> list[list[int]]:
    return [int_list(rng, cols) for _ in range(rows)]


def _rectangles(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([[rng.randint(-9, 9)]],), ([[1, 2, 3]],), ([[4], [-5]],), ([[2, 7], [7, 1]],)] + [
        (_grid(rng, rng.randint(2, 4), rng.randint(2, 4)),) for _ in range(2)]


def _ragged(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([[]],), ([[rng.randint(-9, 9)]],), ([[1, 2], [], [3]],)] + [
        ([int_list(rng, rng.randint(0, 4)) for _ in range(rng.randint(2, 4))],) for _ in range(2)]


def _squares(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([[rng.randint(-9, 9)]],), ([[1, 2], [3, 4]],)] + [
        (_grid(rng, size, size),) for size in (3, 4, rng.randint(2, 5))]


def _tied_rows(rng: random.Random, env: dict) -> list[tuple]:
    return _rectangles(rng, env) + [([[1, 4], [5, 0], [2, 3]],), ([[], [-1]],)]


def _diagonals(env: dict, g: list) -> int:
    size = len(g)
    cells = {(i, i) for i in range(size)} | {(i, size - 1 - i) for i in range(size)}
    return sum(g[i][j] for i, j in cells)


def _largest_row(env: dict, g: list) -> int:
    return max(range(len(g)), key=lambda i: (sum(g[i]), -i)) if g else -1


def _largest_cell(env: dict, g: list):
    cells = [(value, i, j) for i, row in enumerate(g) for j, value in enumerate(row)]
    if not cells:
        return None
    best = max(value for value, _, _ in cells)
    return min((i, j) for value, i, j in cells if value == best)


TRANSPOSE_BODY = ("if not {g}:\n    return []\nresult = []\nfor j in range(len({g}[0])):\n    column = []\n"
                  "    for row in {g}:\n        column.append(row[j])\n    result.append(column)\nreturn result")
FLATTEN_BODY = "result = []\nfor row in {g}:\n    for x in row:\n        result.append(x)\nreturn result"
COLUMN_SUMS_BODY = ("if not {g}:\n    return []\nsums = [0] * len({g}[0])\nfor row in {g}:\n"
                    "    for j in range(len(row)):\n        sums[j] += row[j]\nreturn sums")
DIAGONALS_BODY = ("size = len({g})\ntotal = 0\nfor i in range(size):\n    total += {g}[i][i]\n"
                  "    if i != size - 1 - i:\n        total += {g}[i][size - 1 - i]\nreturn total")
MAX_ROW_BODY = ("best = -1\nfor i in range(len({g})):\n    if best == -1 or sum({g}[i]) > sum({g}[best]):\n"
                "        best = i\nreturn best")
LARGEST_CELL_BODY = ("best = None\nfor i in range(len({g})):\n    for j in range(len({g}[i])):\n"
                     "        if best is None or {g}[i][j] > {g}[best[0]][best[1]]:\n            best = (i, j)\n"
                     "return best")
IDENTITY_BODY = ("result = []\nfor i in range({a}):\n    row = []\n    for j in range({a}):\n"
                 "        row.append(1 if i == j else 0)\n    result.append(row)\nreturn result")

GRID_STEP_FAMILIES = (
    Family("transpose", "grid", G1, TRANSPOSE_BODY, lambda e, g: [list(column) for column in zip(*g)],
           ("the transpose of the rectangular grid {g}: its columns as rows (an empty list for an empty grid)",
            "a new list of lists whose row j is column j of the rectangular {g}",
            "{g} with rows and columns swapped, so that element [i][j] moves to [j][i]",
            "the columns of the rectangular list of rows {g}, each one turned into a list, from left to right"),
           cases=_rectangles),
    Family("flatten_rows", "grid", G1, FLATTEN_BODY, lambda e, g: sum(g, []),
           ("the rows of {g} joined into one flat list, row after row",
            "a single list holding every element of {g}, the first row first",
            "{g} flattened by one level: the items of each inner list in order",
            "all the numbers of the list of lists {g} in reading order, in one list"), cases=_ragged),
    Family("column_sums", "grid", G1, COLUMN_SUMS_BODY, lambda e, g: [sum(column) for column in zip(*g)],
           ("the sum of each column of the rectangular grid {g}, as a list (empty for an empty grid)",
            "a list whose j-th element is the total of column j of the rectangular {g}",
            "the column totals of {g}, from the leftmost column to the rightmost",
            "for every column of the rectangular list of rows {g}, what its entries add up to, in order"),
           cases=_rectangles),
    Family("diagonal_sums", "grid", G1, DIAGONALS_BODY, _diagonals,
           ("the sum of both diagonals of the square grid {g}, a centre cell shared by them counted only once",
            "the total of the main diagonal and the anti-diagonal of the square {g}, without counting the "
            "middle cell twice",
            "what the cells on the two diagonals of the square list of rows {g} add up to, each cell once",
            "the sum of the entries of the square {g} that lie on either of its diagonals"), cases=_squares),
    Family("max_row_index", "grid", G1, MAX_ROW_BODY, _largest_row,
           ("the index of the row of {g} with the largest sum, the first such row on a tie, or -1 if {g} has no rows",
            "which row of {g} adds up to the most (the earliest if several do), and -1 for an empty grid",
            "the position of the row with the biggest total in {g}, ties going to the lower index, -1 when empty",
            "the number of the row of {g} whose values have the greatest sum, preferring earlier rows, and -1 for "
            "no rows"), cases=_tied_rows),
    Family("largest_cell", "grid", G1, LARGEST_CELL_BODY, _largest_cell,
           ("the (row, column) position of the largest value in {g}, the first in reading order on a tie, or None "
            "if {g} holds no values",
            "a tuple (i, j) such that {g}[i][j] is the maximum of {g}, the earliest such cell row by row, and "
            "None when {g} is empty",
            "where the biggest number of {g} sits, as a (row, column) tuple, the first one reading left to right "
            "and top to bottom, or None if there are no numbers",
            "the row and column indices of the greatest entry of {g}, preferring the earliest in reading order, "
            "and None for a grid without entries"), cases=_tied_rows),
    Family("identity_matrix", "grid", (("a", "int"),), IDENTITY_BODY,
           lambda e, a: [[int(i == j) for j in range(a)] for i in range(a)],
           ("the {a} by {a} identity matrix as a list of lists, with 1 on the diagonal and 0 elsewhere (empty if "
            "{a} is not positive)",
            "a list of {a} rows of {a} integers that are 0 except for a 1 where the row index equals the column "
            "index",
            "the identity matrix of size {a}, rows as lists, and an empty list when {a} < 1",
            "a square grid of side {a} filled with zeros apart from ones along its main diagonal"),
           cases=lambda rng, env: ints(rng, 1, -3, 4) + [(1,), (3,)]),
)
