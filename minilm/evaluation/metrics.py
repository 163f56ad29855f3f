"""Evaluation metrics and reports: pass@k, per-group summaries, before/after comparisons.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): draw n samples for a
task, c of them pass its tests; the chance that at least one of k samples drawn without replacement
from those n passes is

    pass@k = 1 - C(n - c, k) / C(n, k)  =  1 - prod_{i = n-c+1}^{n} (1 - k / i)

The binomial form overflows floats for large n; the product form never leaves [0, 1].
`pass_at_k_reference` computes the binomial form exactly (integers, then one division) and
tests/test_evaluate.py checks both against enumerating every k-subset.

A report is built only from per-task records (see minilm.evaluation.evaluate), so every number in it can be
recomputed from the records stored next to it. Keys of a record used here:
    kind, split, family, n (samples), c (samples that passed)          code tasks (generate, repair)
    statuses (one executor status per sample)
    precision, recall, f1                                              explain tasks
    tf_nll, tf_tokens, tf_correct                                      teacher-forced, any kind
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

from minilm.checkpoint import write_text_atomic

CODE_KINDS = ("generate", "repair")


def _check_counts(n: int, c: int, k: int):
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}; "
                         "draw at least k samples per task")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with n samples of which c passed (numerically stable form)."""
    _check_counts(n, c, k)
    if n - c < k:  # every k-subset contains a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_reference(n: int, c: int, k: int) -> float:
    """The same number from the binomial form, in exact integer arithmetic."""
    _check_counts(n, c, k)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---------------------------------------------------------------- summaries
def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def summarize_group(records: Sequence[dict], ks: Iterable[int] = (1,)) -> dict:
    """The numbers of one group of task records (all tasks, one split, one kind or one family)."""
    code = [r for r in records if r.get("kind", "generate") in CODE_KINDS]
    explain = [r for r in records if r.get("kind") == "explain"]
    summary = {"tasks": len(records), "code_tasks": len(code)}
    for k in ks:  # pass@k is reported where every task in the group has at least k samples
        if code and all(r["n"] >= k for r in code):
            summary[f"pass@{k}"] = _mean([pass_at_k(r["n"], r["c"], k) for r in code])
    summary["statuses"] = dict(sorted(Counter(s for r in code for s in r["statuses"]).items()))
    summary["explain_tasks"] = len(explain)
    for name in ("precision", "recall", "f1"):
        summary[f"explain_{name}"] = _mean([r[name] for r in explain])
    tokens = sum(r.get("tf_tokens", 0) for r in records)
    summary["tf_tokens"] = tokens
    if tokens:  # per-token means over the whole group: tokens, not tasks, are the unit
        loss = sum(r["tf_nll"] for r in records if r.get("tf_tokens")) / tokens
        summary["tf_loss"] = loss
        summary["tf_perplexity"] = math.exp(loss)
        summary["tf_token_accuracy"] = sum(r["tf_correct"] for r in records if r.get("tf_tokens")) / tokens
    return summary


def _groups(records: Sequence[dict], field: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(str(record.get(field) or "unknown"), []).append(record)
    return dict(sorted(groups.items()))


def summarize(records: Sequence[dict], ks: Optional[Iterable[int]] = None) -> dict:
    """Overall, per split, per task kind and per family summaries of per-task records.

    ks defaults to 1 and, when tasks were sampled n > 1 times, the usual 5, 10, ... up to n.
    """
    if ks is None:
        n_min = min((r["n"] for r in records if r.get("kind", "generate") in CODE_KINDS), default=1)
        ks = [k for k in (1, 5, 10, 20, 50, 100) if k <= max(n_min, 1)]
    ks = list(ks)
    return {"overall": summarize_group(records, ks),
            "by_split": {name: summarize_group(g, ks) for name, g in _groups(records, "split").items()},
            "by_kind": {name: summarize_group(g, ks) for name, g in _groups(records, "kind").items()},
            "by_family": {name: summarize_group(g, ks) for name, g in _groups(records, "family").items()}}


# ---------------------------------------------------------------- Markdown
HEADLINE = [("pass@1", "pass@1"), ("explain_f1", "explain F1"), ("tf_loss", "loss (code tokens)"),
            ("tf_perplexity", "perplexity"), ("tf_token_accuracy", "token accuracy")]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_names(summary: dict) -> list[str]:
    passes = [key for key in summary["overall"] if key.startswith("pass@")]
    return passes + [key for key, _ in HEADLINE if key != "pass@1"]


def report_markdown(report: dict) -> str:
    """One evaluation as Markdown: the settings, then one table per grouping."""
    summary = report["summary"]
    names = _metric_names(summary)
    parts = [f"# Evaluation: {report.get('meta', {}).get('label', 'model')}", ""]
    parts += [f"- {key}: {value}" for key, value in report.get("meta", {}).items()]
    for title, groups in (("Overall", {"all": summary["overall"]}), ("By split", summary["by_split"]),
                          ("By kind", summary["by_kind"]), ("By family", summary["by_family"])):
        rows = [[name, g["tasks"]] + [g.get(m) for m in names] +
                [", ".join(f"{s} {n}" for s, n in g["statuses"].items())] for name, g in groups.items()]
        parts += ["", f"## {title}", "", _table(["group", "tasks", *names, "code statuses"], rows)]
    return "\n".join(parts) + "\n"


def compare_reports(before: dict, after: dict, labels: Sequence[str] = ("before", "after")) -> str:
    """Markdown: one row per group, each metric as "before -> after (change)"."""
    names = [m for m in _metric_names(after["summary"]) if m != "tf_perplexity"]  # loss says it
    rows = []
    for grouping in ("overall", "by_split", "by_kind", "by_family"):
        groups = {"all": after["summary"]["overall"]} if grouping == "overall" else after["summary"][grouping]
        old_groups = {"all": before["summary"]["overall"]} if grouping == "overall" else before["summary"][grouping]
        for group, new in groups.items():
            old = old_groups.get(group, {})
            cells = []
            for metric in names:
                a, b = old.get(metric), new.get(metric)
                change = f" ({b - a:+.3f})" if a is not None and b is not None else ""
                cells.append("-" if a is None and b is None else f"{_cell(a)} -> {_cell(b)}{change}")
            label = group if grouping == "overall" else f"{grouping[3:]}: {group}"
            rows.append([label, new["tasks"], *cells])
    header = ["group", "tasks", *(f"{m} ({labels[0]} -> {labels[1]})" if m == names[0] else m for m in names)]
    return _table(header, rows) + "\n"


# ---------------------------------------------------------------- files
def write_report(report: dict, directory, name: str = "eval") -> tuple[Path, Path]:
    """Write DIRECTORY/NAME.json (summary, settings and every per-task record) and NAME.md."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    # atomic: a resumed evaluation reuses the .json, so it must never be half of one
    write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    write_text_atomic(md_path, report_markdown(report))
    return json_path, md_path


def write_comparison(before: dict, after: dict, directory, name: str = "eval_comparison",
                     labels: Sequence[str] = ("before", "after")) -> tuple[Path, Path]:
    """Write both summaries as JSON and the side-by-side table as Markdown."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    data = {labels[0]: {"meta": before.get("meta", {}), "summary": before["summary"]},
            labels[1]: {"meta": after.get("meta", {}), "summary": after["summary"]}}
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(f"# {labels[0]} vs {labels[1]}\n\n" + compare_reports(before, after, labels))
    return json_path, md_path
