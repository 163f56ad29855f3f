"""A finished run survives a careless user: bad input is refused before anything is written, a
stage's outputs are replaced only once the new ones are complete, one process writes a run."""
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import train
from minilm.config_checks import CHOICES, RANGES
from minilm.rundir import partial_dir, publish_stage, recover_stage, run_lock

SMALL_RUN = ["--config", "tiny", "--corpus_max_bytes", "60000", "--max_iters", "4", "--eval_interval", "2",
             "--ft_max_iters", "2", "--ft_eval_interval", "2", "--eval_tasks_per_split", "2", "--task_train_size", "100"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    argv = [*SMALL_RUN, "--out_dir", str(root / "run"), "--data_dir", str(root / "data")]
    assert train.main(argv) == 0
    return root, argv


def snapshot(run_dir: Path) -> dict:
    """Every file under the run and its sha256."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def out_of_range(name):
    low, high = RANGES[name]
    return [str(low - 1) if isinstance(low, int) else str(low - 1.5)] + ([] if high == float("inf") else [str(high * 2)])


# the cases the reliability issue reproduced, and one bad value of every checked field
REPRODUCED = [
    ["--stage", "finetune", "--ft_batch_size", "0"], ["--stage", "pretrain", "--batch_size", "0"],
    ["--grad_accum", "0"], ["--vocab_size", "0"], ["--tokenizer_backend", "bogus"], ["--n_layer", "0"],
    ["--n_embd", "0"], ["--max_iters", "-5"], ["--lr", "-1"], ["--block_size", "1000000000"], ["--n_head", "0"],
    ["--dropout", "2"], ["--lora_r", "0"], ["--eval_tasks_per_split", "-1"], ["--lr"], ["--dtype", "float16x"],
    ["--finetune", "bogus"], ["--init", "missing.gguf"], ["--resume", "--n_embd", "128"],
]
EVERY_FIELD = [[f"--{name}", value] for name in sorted(RANGES) for value in out_of_range(name)] + \
              [[f"--{name}", "bogus"] for name in sorted(CHOICES)]


@pytest.mark.parametrize("bad", REPRODUCED, ids=" ".join)
def test_a_reproduced_typo_leaves_the_finished_run_byte_identical(finished_run, bad, capsys):
    root, argv = finished_run
    before = snapshot(root / "run")
    assert train.main([*argv, *bad]) == 2
    assert snapshot(root / "run") == before
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # one line says what and how to fix it


@settings(max_examples=30)
@given(st.sampled_from(EVERY_FIELD))
def test_any_out_of_range_value_leaves_the_finished_run_byte_identical(finished_run, bad):
    root, argv = finished_run
    before = snapshot(root / "run")
    assert train.main([*argv, *bad]) == 2
    assert snapshot(root / "run") == before


def test_a_second_process_on_the_run_gets_one_line_naming_the_holder(finished_run, capsys):
    root, argv = finished_run
    before = snapshot(root / "run")
    with run_lock(root / "run"):
        assert train.main([*argv, "--force"]) == 2
    error = capsys.readouterr().err.strip()
    assert "is in use by process" in error and len(error.splitlines()) == 1
    assert snapshot(root / "run") == before


def test_an_interrupted_swap_gives_the_finished_stage_back(tmp_path):
    stage = tmp_path / "pretrain"
    stage.mkdir()
    (stage / "model.safetensors").write_text("finished")
    partial_dir(stage).mkdir()
    (partial_dir(stage) / "model.safetensors").write_text("new")
    stage.rename(stage.with_name("pretrain.old"))  # killed between publish_stage's two renames
    recover_stage(stage)
    assert (stage / "model.safetensors").read_text() == "finished"
    publish_stage(stage)
    assert (stage / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrain"]


def test_config_json_records_the_settings_of_the_last_finished_stage(finished_run):
    root, argv = finished_run
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["max_iters"] == 4 and config["model"]["n_embd"] == 64


def test_a_full_disk_is_one_line_and_the_finished_stage_stays(finished_run, monkeypatch, capsys):
    """Redoing pretraining on a full disk: the new weights cannot be written, the old ones stay
    where sample.py and the eval stage read them (before, a step-0 model took their place)."""
    import errno
    from minilm import checkpoint as ckpt
    root, argv = finished_run
    before = snapshot(root / "run")

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(ckpt, "save_weights", full)
    assert train.main([*argv, "--stage", "pretrain", "--force"]) == 2
    error = capsys.readouterr().err.strip()
    assert "No space left on device" in error and len(error.splitlines()) == 1
    after = snapshot(root / "run")
    assert {name: sha for name, sha in after.items() if name in before} == before
    assert not any(name.startswith("pretrain/") and name not in before for name in after)


def test_ctrl_c_during_the_eval_stage_exits_130_in_one_line(finished_run, monkeypatch, capsys):
    from minilm.stages import eval as eval_stage
    root, argv = finished_run
    before = snapshot(root / "run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(eval_stage, "evaluate_model", interrupted)
    assert train.main([*argv, "--stage", "eval", "--force"]) == 130
    error = capsys.readouterr().err.strip()
    assert "interrupted" in error and len(error.splitlines()) == 1
    assert snapshot(root / "run") == before
