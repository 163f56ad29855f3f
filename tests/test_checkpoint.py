"""Checkpoints: atomic writes survive a crash at any point, loading refuses what it cannot trust
(corrupt, truncated, another architecture, another tokenizer, pickled objects), finished runs load
back as the same model, and the command line reports a bad checkpoint on one line with exit code 2.
"""
import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from minilm import checkpoint as ckpt
from minilm.config import PRESETS
from minilm.model.gpt import GPT
from minilm.training.optim import make_optimizer

CONFIG = replace(PRESETS["tiny"].model, block_size=32)
ROOT = Path(__file__).resolve().parents[1]


def tiny_model(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    return GPT(config)


def save_one(root, step, model, optimizer=None, **state):
    optimizer = optimizer or make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    return ckpt.save_checkpoint(root, step, model, optimizer, state, model.config)


def load_into_fresh(folder, **kwargs):
    model = tiny_model(seed=123)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    state = ckpt.load_checkpoint(folder, model, optimizer, CONFIG, **kwargs)
    return model, state


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_old_file_when_the_writer_dies_midway(tmp_path):
    target = tmp_path / "f.json"
    ckpt.write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with ckpt.atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')  # the crash comes before the rename
            raise RuntimeError("simulated crash")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


@pytest.mark.parametrize("crash_at", ["weights", "optimizer", "rename", "latest"])
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch, crash_at):
    """Simulate the process dying at each stage of save_checkpoint; LATEST must still name a
    complete checkpoint whose contents load and equal what was saved."""
    root = tmp_path / "checkpoints"
    first = tiny_model(seed=1)
    save_one(root, 1, first, note="first")
    second = tiny_model(seed=2)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill")
    if crash_at == "weights":  # half a file written, then death
        real_save = ckpt.save_file

        def half(tensors, path, metadata=None):
            real_save(tensors, path, metadata=metadata)
            Path(path).write_bytes(Path(path).read_bytes()[:100])
            crash()
        monkeypatch.setattr(ckpt, "save_file", half)
    elif crash_at == "optimizer":
        monkeypatch.setattr(ckpt.torch, "save", crash)
    elif crash_at == "rename":  # the new folder is complete but never renamed into place
        monkeypatch.setattr(ckpt.os, "replace", lambda src, dst: crash() if "step_000002" in str(dst) else os.rename(src, dst))
    else:  # the new folder is in place but LATEST still names the old one
        real_write = ckpt.write_text_atomic
        monkeypatch.setattr(ckpt, "write_text_atomic",
                            lambda path, text: crash() if path.name == ckpt.LATEST else real_write(path, text))
    with pytest.raises(KeyboardInterrupt):
        save_one(root, 2, second)
    monkeypatch.undo()

    folder = ckpt.latest_checkpoint(root)
    assert folder.name == "step_000001"
    model, state = load_into_fresh(folder)
    assert state["note"] == "first" and state["step"] == 1
    for (name, a), b in zip(first.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # and the next save succeeds over whatever debris the crash left
    save_one(root, 3, second)
    assert ckpt.latest_checkpoint(root).name == "step_000003"
    # nothing else: not even the half-written .step_000002.tmp-PID folder a kill left
    assert sorted(p.name for p in root.iterdir()) == [ckpt.LATEST, "step_000003"]


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    model = tiny_model()
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    folder = save_one(tmp_path, 7, model, optimizer, best=1.5)
    fresh = tiny_model(seed=9)
    fresh_opt = make_optimizer(fresh, 1e-3, 0.1, (0.9, 0.95), "cpu")
    state = ckpt.load_checkpoint(folder, fresh, fresh_opt, CONFIG)
    assert state["step"] == 7 and state["best"] == 1.5
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for sa, sb in zip(optimizer.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_a_checkpoint_weights_file_counts_the_trainable_parameters(tmp_path):
    """What the benches read for "trainable parameters" (tied embeddings counted once)."""
    from minilm.model import lora
    model = lora.apply_lora(tiny_model(), r=2)
    folder = save_one(tmp_path, 1, model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ckpt.parameter_count(folder / ckpt.WEIGHTS) == trainable > 0
    ckpt.save_weights(tmp_path / ckpt.MODEL_FILE, ckpt.trainable_state(tiny_model(), trainable_only=False), CONFIG)
    assert ckpt.parameter_count(tmp_path / ckpt.MODEL_FILE) == sum(p.numel() for p in tiny_model().parameters())


# ----------------------------------------------------------------------------- validation
def test_truncated_or_flipped_weights_are_refused_naming_the_file(tmp_path):
    folder = save_one(tmp_path, 1, tiny_model())
    weights = folder / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still parses, but the checksum catches it
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=rf"{weights}: missing or corrupt \(checksum"):
        load_into_fresh(folder)
    weights.write_bytes(bytes(data[:1000]))
    with pytest.raises(ckpt.CheckpointError, match=str(weights)):
        load_into_fresh(folder)


def test_truncated_model_file_is_a_clear_error(tmp_path):
    path = tmp_path / ckpt.MODEL_FILE
    ckpt.save_weights(path, ckpt.trainable_state(tiny_model(), False), CONFIG)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ckpt.CheckpointError, match=rf"{path}: corrupt or truncated"):
        ckpt.load_model_file(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load_model_file(path)


def test_unreadable_state_is_a_clear_error(tmp_path):
    folder = save_one(tmp_path, 1, tiny_model())
    (folder / ckpt.STATE).write_text('{"step": 1, "fil')
    with pytest.raises(ckpt.CheckpointError, match="unreadable checkpoint state"):
        load_into_fresh(folder)


def test_checkpoint_of_another_architecture_names_the_difference(tmp_path):
    folder = save_one(tmp_path, 1, tiny_model())
    other = replace(CONFIG, n_layer=3)
    model = GPT(other)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    with pytest.raises(ckpt.CheckpointError, match=r"another architecture: n_layer=2 \(run expects 3\)"):
        ckpt.load_checkpoint(folder, model, optimizer, other)
    path = tmp_path / ckpt.MODEL_FILE
    ckpt.save_weights(path, ckpt.trainable_state(tiny_model(), False), CONFIG)
    with pytest.raises(ckpt.CheckpointError, match=r"n_embd=64 \(run expects 128\)"):
        ckpt.load_model_file(path, expected=replace(CONFIG, n_embd=128, n_head=4))


def test_checkpoint_of_another_tokenizer_is_refused(tmp_path):
    folder = save_one(tmp_path, 1, tiny_model(), tokenizer_sha256="a" * 64)
    load_into_fresh(folder, tokenizer_sha256="a" * 64)
    with pytest.raises(ckpt.CheckpointError, match="different tokenizer"):
        load_into_fresh(folder, tokenizer_sha256="b" * 64)


class _Exploit:
    """Unpickling this would create a file: the loader must never get that far."""
    marker = None

    def __reduce__(self):
        return (open, (str(_Exploit.marker), "w"))


def test_optimizer_file_is_loaded_without_unpickling_objects(tmp_path):
    folder = save_one(tmp_path, 1, tiny_model())
    _Exploit.marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "payload": _Exploit()}, folder / ckpt.OPTIMIZER)
    state = json.loads((folder / ckpt.STATE).read_text())
    state["files"][ckpt.OPTIMIZER] = ckpt.file_sha256(folder / ckpt.OPTIMIZER)  # a consistent forgery
    (folder / ckpt.STATE).write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.OPTIMIZER}: cannot load optimizer state"):
        load_into_fresh(folder)
    assert not _Exploit.marker.exists()


def test_compiled_and_ddp_key_prefixes_are_ignored(tmp_path):
    model = tiny_model()
    tensors = {f"_orig_mod.{k}": v for k, v in ckpt.trainable_state(model, False).items()}
    path = tmp_path / ckpt.MODEL_FILE
    ckpt.save_weights(path, tensors, CONFIG)
    loaded, _ = ckpt.load_model_file(path)
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tie", [True, False])
def test_a_loaded_model_is_the_saved_one_and_trains_without_touching_the_file(tmp_path, tie):
    # load_model_file assigns the file's tensors to a skeleton (no random init, no copy):
    # they may map the file, so an update in place must leave the file as it was
    model = tiny_model(config=replace(CONFIG, tie_embeddings=tie))
    path = tmp_path / ckpt.MODEL_FILE
    ckpt.save_weights(path, ckpt.trainable_state(model, False), model.config)
    before = ckpt.file_sha256(path)
    loaded, _ = ckpt.load_model_file(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tie
    assert not any(p.is_meta for p in loaded.parameters()) and all(p.requires_grad for p in loaded.parameters())
    idx = torch.randint(0, CONFIG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    loaded(idx).logsumexp(-1).mean().backward()
    with torch.no_grad():
        for p in loaded.parameters():
            p.sub_(p.grad)
    assert ckpt.file_sha256(path) == before
    assert torch.equal(ckpt.read_weights(path)[0]["transformer.wte.weight"], model.transformer.wte.weight)


# ----------------------------------------------------------------------------- finished runs
@pytest.fixture(scope="module")
def tokenizer():
    from minilm.data.sft import SPECIAL_TOKENS
    from minilm.tokenizer.tokenizer import Tokenizer
    text = Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_text()
    return Tokenizer.train([text], 300, special_tokens=SPECIAL_TOKENS)


def _finished_run(run_dir: Path, tok, lora_adapter: bool):
    from minilm.formats import peft
    from minilm.model import lora
    from minilm.data.tokens import tokenizer_fingerprint
    run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(run_dir / ckpt.TOKENIZER_FILE))
    config = replace(CONFIG, vocab_size=320)
    base = tiny_model(config=config)
    base_path = run_dir / "pretrain" / ckpt.MODEL_FILE
    ckpt.save_weights(base_path, ckpt.trainable_state(base, False), config,
                      {"tokenizer_sha256": tokenizer_fingerprint(tok)})
    if not lora_adapter:
        return base
    tuned = tiny_model(config=config)
    lora.apply_lora(tuned, r=4, alpha=8.0)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter is not zero
    ft = run_dir / "finetune"
    ft.mkdir()
    peft.save_adapter(tuned, ft)
    ckpt.write_json_atomic(ft / "base.json", {"base": "../pretrain/model.safetensors",
                                              "sha256": ckpt.file_sha256(base_path)})
    return tuned


def test_load_run_rebuilds_pretrained_and_lora_models(tmp_path, tokenizer):
    tuned = _finished_run(tmp_path, tokenizer, lora_adapter=True).eval()
    idx = torch.randint(0, 300, (2, 16))
    merged, tok = ckpt.load_run(tmp_path)
    assert tok.vocab_size == tokenizer.vocab_size
    torch.testing.assert_close(merged(idx), tuned(idx), rtol=1e-5, atol=1e-5)
    unmerged, _ = ckpt.load_run(tmp_path, merge_lora=False)
    torch.testing.assert_close(unmerged(idx), tuned(idx), rtol=1e-6, atol=1e-6)
    base, _ = ckpt.load_run(tmp_path, stage="pretrain")
    assert not torch.allclose(base(idx), tuned(idx))


def test_load_run_refuses_a_changed_tokenizer_or_base(tmp_path, tokenizer):
    from minilm.data.sft import SPECIAL_TOKENS
    from minilm.tokenizer.tokenizer import Tokenizer
    _finished_run(tmp_path, tokenizer, lora_adapter=True)
    base_path = tmp_path / "pretrain" / ckpt.MODEL_FILE
    tensors, metadata = ckpt.read_weights(base_path)
    tensors["transformer.ln_f.bias"] += 1  # the base changed after fine-tuning
    ckpt.save_weights(base_path, tensors, replace(CONFIG, vocab_size=320),
                      {"tokenizer_sha256": metadata["tokenizer_sha256"]})
    with pytest.raises(ckpt.CheckpointError, match="changed since the adapter"):
        ckpt.load_run(tmp_path)
    Tokenizer.train(["other text entirely " * 50], 290, special_tokens=SPECIAL_TOKENS).save(
        str(tmp_path / ckpt.TOKENIZER_FILE))
    with pytest.raises(ckpt.CheckpointError, match="different tokenizer"):
        ckpt.load_run(tmp_path, stage="pretrain")


# ----------------------------------------------------------------------------- the command line
def _train(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_train_py_pretrains_resumes_and_reports_bad_checkpoints(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("textwrap.py", "shlex.py", "colorsys.py", "bisect.py", "keyword.py", "fnmatch.py"):
        (corpus / name).write_text(Path(sysconfig.get_paths()["stdlib"], name).read_text())
    run = tmp_path / "run"
    common = ["--config", "tiny", "--out_dir", str(run), "--data_dir", str(tmp_path / "data"),
              "--corpus", str(corpus), "--vocab_size", "300", "--block_size", "32", "--batch_size", "4",
              "--eval_iters", "1", "--stage", "pretrain"]
    done = _train([*common, "--max_iters", "4", "--eval_interval", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pretrain done: 4 steps" in done.stdout
    for name in ("tokenizer.json", "config.json", "pretrain/model.safetensors", "pretrain/metrics.jsonl"):
        assert (run / name).is_file(), name
    more = _train([*common, "--max_iters", "6", "--eval_interval", "2", "--resume"], tmp_path)
    assert more.returncode == 0 and "resumed from" in more.stdout and "pretrain done: 2 steps" in more.stdout

    weights = run / "pretrain" / "checkpoints" / "step_000006" / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:500])
    broken = _train([*common, "--max_iters", "8", "--resume"], tmp_path)
    assert broken.returncode == 2
    assert broken.stderr.count("\n") == 1 and broken.stderr.startswith(f"error: {weights}")

    bad = _train(["--config", "tiny", "--stage", "pretrian"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --stage must be one of")
    helped = _train(["--config", "small", "--help"], tmp_path)  # usage, then nothing runs
    assert helped.returncode == 0 and "--resume" in helped.stdout and "smollm2" in helped.stdout
    assert "ft_max_iters" in helped.stdout and not (tmp_path / "runs").exists()


SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from minilm import checkpoint as ckpt
from minilm.config import PRESETS
ckpt.save_weights(sys.argv[1], {"w": torch.arange(6.0), "b": torch.ones(2)}, PRESETS["tiny"].model,
                  {"tokenizer_sha256": "ab" * 32, "pretrained": "a base, dequantised", "step": 7, "note": "é"})
"""


def test_the_same_weights_saved_by_two_processes_are_the_same_bytes(tmp_path):
    """safetensors orders metadata by a per-process hash: without sort_metadata the bytes (and the
    SHA-256 that stage keys read) changed from one import of the same base to the next."""
    paths = [tmp_path / f"w{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(path)], check=True)
    assert len({ckpt.file_sha256(path) for path in paths}) == 1
    tensors, metadata = ckpt.read_weights(paths[0])
    assert torch.equal(tensors["w"], torch.arange(6.0)) and metadata["note"] == "é" and metadata["step"] == "7"
