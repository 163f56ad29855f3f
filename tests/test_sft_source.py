"""--sft_source: a bad folder is refused before anything is written, the mined examples reach the
fine-tuning batches at the asked share, and the stage's key follows the folder's files."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minilm import checkpoint as ckpt
from minilm.config import PRESETS, ConfigError
from minilm.data.sft import Examples, mix_examples
from minilm.data.tokens import tokenizer_fingerprint
from minilm.model.gpt import GPT
from minilm.stages import report as report_stage, reuse
from minilm.stages.finetune import MINED_FILE, run_finetune
from minilm.stages.tokenizer import ensure_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path, **changes):
    return dataclasses.replace(PRESETS["tiny"], out_dir=str(tmp_path / "run"), **changes)


def write_package(folder: Path) -> Path:
    """A folder of two short documented functions, one with a doctest."""
    folder.mkdir(exist_ok=True)
    (folder / "shapes.py").write_text(
        'def area(w, h):\n    """Return the area of a w by h rectangle.\n\n    >>> area(2, 3)\n    6\n    """\n'
        '    return w * h\n\n\ndef perimeter(w, h):\n    """Return the perimeter of a w by h rectangle."""\n'
        '    return 2 * (w + h)\n')
    return folder


@pytest.mark.parametrize("argv, message", [
    (["--sft_source", "no/such/folder"], "--sft_source 'no/such/folder' is not a folder"),
    (["--sft_source", "EMPTY"], "holds no .py files"),
    (["--sft_mined_fraction", "1"], "--sft_mined_fraction must be at least 0 and below 1"),
])
def test_a_bad_sft_source_is_one_line_exit_2_and_nothing_written(tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no code here")
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", "--config", "tiny", "--out_dir", str(out), *argv],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr.replace(str(tmp_path / "empty"), "EMPTY") and not out.exists()
    with pytest.raises(ConfigError, match="not a folder"):
        tiny(tmp_path, sft_source=str(tmp_path / "missing"))


@pytest.mark.parametrize("n_suite, n_mined, fraction", [(100, 7, 0.2), (37, 200, 0.5), (10, 3, 0.0), (50, 0, 0.3)])
def test_mined_examples_are_the_asked_share_of_the_mix(n_suite, n_mined, fraction):
    def examples(n, token):
        return Examples([[token, i] for i in range(n)], [[0, 1]] * n, 8, 0, n_dropped=1)
    mixed = mix_examples(examples(n_suite, 1), examples(n_mined, 2), fraction)
    share = sum(ids[0] == 2 for ids in mixed.ids) / len(mixed)
    expected = fraction if n_mined else 0.0
    assert abs(share - expected) <= 1 / len(mixed)
    assert mixed.ids[:n_suite] == examples(n_suite, 1).ids  # the suite's examples first, as they were
    if n_mined and fraction:  # every mined example is drawn, none more than once beyond the others
        counts = [sum(ids == [2, i] for ids in mixed.ids) for i in range(n_mined)]
        assert min(counts) >= 1 and max(counts) - min(counts) <= 1


def test_the_finetune_key_follows_the_mined_folder(tmp_path):
    folder = write_package(tmp_path / "code")
    plain, mined = tiny(tmp_path), tiny(tmp_path, sft_source=str(folder))
    key = reuse.stage_key(mined, "finetune")
    assert key != reuse.stage_key(plain, "finetune")
    assert key != reuse.stage_key(dataclasses.replace(mined, sft_mined_fraction=0.5), "finetune")
    assert reuse.stage_key(mined, "finetune") == key  # nothing changed: the same key
    (folder / "shapes.py").write_text((folder / "shapes.py").read_text().replace("2 * (w + h)", "w + w + h + h"))
    assert reuse.stage_key(mined, "finetune") != key


def test_finetuning_on_a_folder_logs_and_records_what_was_mined(tmp_path):
    cfg = tiny(tmp_path, device="cpu", data_dir=str(tmp_path / "data"), corpus=str(ROOT / "minilm"),
               corpus_max_bytes=30_000, ft_max_iters=1, ft_warmup_iters=1, ft_eval_tasks=4, task_train_size=50,
               peak_flops=1e12, sft_source=str(write_package(tmp_path / "code")), sft_mined_fraction=0.5)
    lines = []
    tok = ensure_tokenizer(cfg, log=lines.append)
    torch.manual_seed(0)  # a random base stands for the pretrained one
    ckpt.save_weights(Path(cfg.out_dir) / "pretrain" / ckpt.MODEL_FILE,
                      ckpt.trainable_state(GPT(cfg.model), trainable_only=False), cfg.model,
                      {"tokenizer_sha256": tokenizer_fingerprint(tok)})
    run_finetune(cfg, log=lines.append)
    log = "\n".join(lines)
    assert "mined 2 functions from" in log and "| self_contained | 2 |" in log, log
    assert "drawn as 50% of the examples" in log
    record = json.loads((Path(cfg.out_dir) / "finetune" / MINED_FILE).read_text())
    assert record["counts"]["functions"] == 2 and record["counts"]["verified"] == 1
    notes = report_stage.training_data_notes(cfg)  # the run's report says it too
    assert notes["mined"] == record
    line = f"- fine-tuning data from --sft_source: {record['summary']}"
    assert line in report_stage.report_markdown({
        "run_dir": "r", "device": "cpu", "model_config": {}, "pretrained": "a base", "stage_seconds": {},
        "results": {}, **notes}).splitlines()
    assert "mined" not in report_stage.training_data_notes(dataclasses.replace(cfg, sft_source=""))
