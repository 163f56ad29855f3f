"""Draw a run's curves from its metrics files: loss, learning rate, and the validation metrics.

    python -m minilm.plot RUN_DIR [--out FILE.png]

Reads RUN_DIR/{pretrain,finetune}/metrics.jsonl (written by minilm/training/trainer.py; one JSON object per
line, "kind" = "train" or "eval") and writes one PNG, RUN_DIR/curves.png by default, with a row of
panels per stage: training and validation loss, learning rate, and any other validation metric
(token accuracy, pass@1). matplotlib is an optional extra: pip install "minilm[plot]".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

STAGES = ("pretrain", "finetune")
NOT_PLOTTED = {"kind", "step", "time", "best", "val_loss", "val_token_loss", "val_ppl"}


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl file; a line cut short (a killed run) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_run(run_dir, out: Optional[str] = None) -> Path:
    """Write the curves of every stage in run_dir to a PNG and return its path."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: works without a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit('error: plotting needs matplotlib; pip install "minilm[plot]"') from None
    run_dir = Path(run_dir)
    stages = [(s, read_metrics(run_dir / s / "metrics.jsonl")) for s in STAGES
              if (run_dir / s / "metrics.jsonl").is_file()]
    if not stages:
        raise FileNotFoundError(f"{run_dir}: no pretrain/ or finetune/ metrics.jsonl; is it a run directory?")
    fig, axes = plt.subplots(len(stages), 3, figsize=(15, 4 * len(stages)), squeeze=False)
    for row, (stage, records) in zip(axes, stages):
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        ax = row[0]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
        ax.set(title=f"{stage}: loss", xlabel="step", ylabel="nats")
        ax.legend()
        row[1].plot([r["step"] for r in train], [r["lr"] for r in train])
        row[1].set(title=f"{stage}: learning rate", xlabel="step")
        others = sorted({k for r in evals for k in r} - NOT_PLOTTED)
        for key in others:
            points = [(r["step"], r[key]) for r in evals if key in r]
            row[2].plot(*zip(*points), "o-", label=key)
        row[2].set(title=f"{stage}: validation metrics", xlabel="step")
        if others:
            row[2].legend()
    fig.tight_layout()
    out_path = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilm.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
