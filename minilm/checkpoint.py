"""Checkpoints: atomic writes, the run-directory layout, and loading that validates what it reads.

Run directory (RUN_DIR = --out_dir):

    RUN_DIR/config.json                       the RunConfig of the last stage that finished
    RUN_DIR/.lock                             held by the process writing the run (minilm/rundir.py)
    RUN_DIR/<stage>.partial/                  a stage that has not finished yet (replaces <stage>/ then)
    RUN_DIR/tokenizer.json                    the tokenizer (train.py's tokenizer stage)
    RUN_DIR/pretrain/model.safetensors        final pretrained weights (best validation loss)
    RUN_DIR/pretrain/metrics.jsonl            one JSON object per log line / evaluation
    RUN_DIR/pretrain/checkpoints/LATEST       name of the newest complete checkpoint, e.g. "step_000400"
    RUN_DIR/pretrain/checkpoints/step_000400/ weights.safetensors  trainable parameters
                                              optimizer.pt         optimizer state (tensors, lists, numbers)
                                              state.json           step, data position, early-stopping
                                                                   state, config, tokenizer and corpus
                                                                   hashes, sha256 of the two files above
    RUN_DIR/finetune/...                      the same for fine-tuning, whose final weights are
        adapter_model.safetensors + adapter_config.json   (LoRA: the adapter alone, PEFT layout)
        base.json                                         (LoRA: the base checkpoint it applies to)
        model.safetensors                                 (full / top_k fine-tuning)

Atomicity. Every file is written to a temporary name in the same folder, flushed and fsync'ed,
then renamed over the target (rename is atomic on POSIX). A checkpoint is a folder: it is filled
under a temporary name, renamed into place, and only then does LATEST (itself written atomically)
point at it. A process killed at any instant therefore leaves LATEST naming a complete checkpoint.

Loading validates. Weights go through safetensors and the optimizer through torch.load(weights_only=
True): nothing is unpickled. A truncated or corrupt file, a checksum that does not match, a checkpoint
of another architecture or a different tokenizer raises CheckpointError with the file and the
mismatch on one line; entry points print it and exit with code 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minilm.config import ConfigError, ModelConfig
from minilm.data.tokens import tokenizer_fingerprint
from minilm.formats import peft
from minilm.model import lora
from minilm.model.gpt import GPT
from minilm.tokenizer.tokenizer import Tokenizer

WEIGHTS, OPTIMIZER, STATE, LATEST = "weights.safetensors", "optimizer.pt", "state.json", "LATEST"
MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.safetensors", "tokenizer.json", "config.json"
CONFIG_KEY = "minilm_model_config"  # safetensors metadata key holding the ModelConfig as JSON


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, corrupt, or made for another model/tokenizer.

    A ConfigError, so every entry point already reports it on one line with exit code 2.
    """


# ---------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry itself must reach the disk)."""
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- weights
def trainable_state(model: nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """Parameters by name, each tensor once (the tied lm_head is wte), on CPU and contiguous."""
    return {name: p.detach().to("cpu").contiguous()
            for name, p in model.named_parameters()
            if p.requires_grad or not trainable_only}


def save_weights(path, tensors: dict[str, torch.Tensor], model_config: ModelConfig,
                 extra_metadata: Optional[dict] = None) -> None:
    """Write tensors to a .safetensors file atomically, the ModelConfig in its metadata."""
    metadata = {CONFIG_KEY: json.dumps(dataclasses.asdict(model_config), sort_keys=True)}
    metadata.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        sort_metadata(tmp)


def sort_metadata(path) -> None:
    """Rewrite a .safetensors header with its metadata in key order, in place (same length, same data).

    safetensors writes the metadata in a hash map's order, which changes from process to process:
    the same weights imported twice got two SHA-256s, and every stage keyed on the file redid its work."""
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:
            raise CheckpointError(f"{path}: its re-serialised header is {len(text)} bytes, not {length}")
        f.seek(8)
        f.write(text.ljust(length, b" "))  # the format pads its header with spaces


def read_weights(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; CheckpointError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; train the stage first or fix the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e}); "
                              "delete it and resume from an earlier checkpoint or retrain") from None
    return tensors, metadata


def parameter_count(path) -> int:
    """How many numbers a .safetensors file holds, read from its header (no tensor is loaded).
    A checkpoint's weights.safetensors holds exactly the stage's trainable parameters."""
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def model_config_of(path, metadata: dict[str, str]) -> ModelConfig:
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path}: no {CONFIG_KEY} in the safetensors metadata; "
                              "not a minilm checkpoint (for Hugging Face GPT-2 use GPT.from_hf_gpt2)")
    try:
        return ModelConfig(**json.loads(metadata[CONFIG_KEY]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable model config in metadata ({e})") from None


def check_architecture(path, saved: ModelConfig, expected: ModelConfig) -> None:
    """Shapes must agree; attention path and dropout may differ (they do not change the weights)."""
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "norm", "mlp", "mlp_hidden",
            "n_kv_head", "tie_embeddings")
    diffs = [f"{k}={getattr(saved, k)} (run expects {getattr(expected, k)})"
             for k in keys if getattr(saved, k) != getattr(expected, k)]
    if diffs:
        raise CheckpointError(f"{path}: checkpoint of another architecture: {', '.join(diffs)}; "
                              "use the same --config/model options or a fresh --out_dir")


def _without_wrapper_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names without torch.compile's "_orig_mod." or DDP's leading "module.", so such keys still load."""
    return {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in tensors.items()}


def check_tensors(path, params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                  names: Optional[set] = None) -> None:
    """CheckpointError unless the file's tensors are the model's parameters by name and shape.
    `names`: the parameters the file must provide (default: all of them)."""
    names = set(params) if names is None else set(names)
    missing = sorted(names - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{path}: parameter names do not match the model (missing: "
                              f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected: "
                              f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for name, tensor in tensors.items():
        if tensor.shape != params[name].shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)} but the model "
                                  f"expects {tuple(params[name].shape)}")


def load_weights_into(model: nn.Module, path, tensors: dict[str, torch.Tensor],
                      names: Optional[set] = None) -> None:
    """Copy tensors into the model's parameters, checking names and shapes first (check_tensors)."""
    tensors = _without_wrapper_prefixes(tensors)
    params = dict(model.named_parameters())
    check_tensors(path, params, tensors, names)
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def load_model_file(path, device="cpu", expected: Optional[ModelConfig] = None):
    """A GPT built from a model.safetensors file written by save_weights (the config is inside)."""
    tensors, metadata = read_weights(path)
    config = model_config_of(path, metadata)
    if expected is not None:
        check_architecture(path, config, expected)
        config = expected
    model = GPT.skeleton(config)  # the file's tensors become the parameters: no random init, no copy
    # fp32 parameters whatever the file holds, as GPT(config) had (a copy only where it is not fp32)
    tensors = {name: t.float() for name, t in _without_wrapper_prefixes(tensors).items()}
    check_tensors(path, dict(model.named_parameters()), tensors)
    return model.assign_tensors(tensors).to(device), metadata


# ---------------------------------------------------------------------------------- resumable state
def save_checkpoint(ckpt_root, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, model_config: ModelConfig, keep: int = 1) -> Path:
    """Write checkpoints/step_NNNNNN/ (trainable weights, optimizer, state.json), then LATEST."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final, tmp_dir = ckpt_root / name, ckpt_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    save_weights(tmp_dir / WEIGHTS, trainable_state(model), model_config)
    with atomic_path(tmp_dir / OPTIMIZER) as tmp:
        torch.save(optimizer.state_dict(), tmp)
    state = dict(state, step=step, files={f: file_sha256(tmp_dir / f) for f in (WEIGHTS, OPTIMIZER)})
    write_json_atomic(tmp_dir / STATE, state)
    _fsync_dir(tmp_dir)
    if final.exists():  # re-saving the same step (e.g. interrupted right after a save)
        shutil.rmtree(final)
    os.replace(tmp_dir, final)
    _fsync_dir(ckpt_root)
    write_text_atomic(ckpt_root / LATEST, name + "\n")
    # Older checkpoints go only after LATEST names the new one; so do the half-written folders a
    # killed run left (one process writes a run: minilm/rundir.py's lock).
    older = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p.name != name)
    for old in older[:max(0, len(older) - (keep - 1))] + list(ckpt_root.glob(".step_*.tmp-*")):
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root) -> Optional[Path]:
    """The folder LATEST names, or None when there is no checkpoint yet."""
    pointer = Path(ckpt_root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(ckpt_root) / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer}: names {folder.name}, which does not exist; "
                              "delete LATEST to start over")
    return folder


def load_checkpoint(folder, model: nn.Module, optimizer: torch.optim.Optimizer,
                    model_config: ModelConfig, tokenizer_sha256: Optional[str] = None) -> dict:
    """Restore trainable weights and optimizer state from a checkpoint folder; return its state dict."""
    folder = Path(folder)
    state_path = folder / STATE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{state_path}: unreadable checkpoint state ({e})") from None
    for fname, digest in state.get("files", {}).items():
        path = folder / fname
        if not path.is_file() or file_sha256(path) != digest:
            raise CheckpointError(f"{path}: missing or corrupt (checksum differs from the one recorded "
                                  f"in {STATE}); delete {folder} to fall back to an earlier run")
    saved_tok = state.get("tokenizer_sha256")
    if tokenizer_sha256 and saved_tok and saved_tok != tokenizer_sha256:
        raise CheckpointError(f"{folder}: trained with a different tokenizer (sha256 {saved_tok[:12]}..., "
                              f"now {tokenizer_sha256[:12]}...); restore that tokenizer or use a fresh --out_dir")
    tensors, metadata = read_weights(folder / WEIGHTS)
    check_architecture(folder / WEIGHTS, model_config_of(folder / WEIGHTS, metadata), model_config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    load_weights_into(model, folder / WEIGHTS, tensors, names=trainable)
    try:
        opt_state = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt_state)
    except Exception as e:  # any unpickling/shape error means the file is not this run's optimizer
        raise CheckpointError(f"{folder / OPTIMIZER}: cannot load optimizer state ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return state


# ---------------------------------------------------------------------------------- finished runs
def load_run(run_dir, stage: Optional[str] = None, device="cpu", merge_lora: bool = True):
    """(model, tokenizer) of a finished run, for sampling and evaluation; the model is in eval mode.

    stage=None takes the fine-tuned model when there is one, else the pretrained one; "pretrain" or
    "finetune" picks one (the evaluation's before/after). A LoRA run is rebuilt as base + adapter
    and, with merge_lora=True, merged into plain weights (no extra cost per token).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory; train one with python train.py --out_dir {run_dir}")
    tok_path = run_dir / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: the run has no tokenizer; run python train.py --stage tokenizer")
    try:
        tokenizer = Tokenizer.load(str(tok_path))
    except ValueError as e:  # TokenizerFileError: corrupt or foreign file
        raise CheckpointError(str(e)) from None
    tok_sha = tokenizer_fingerprint(tokenizer)
    ft, pt = run_dir / "finetune", run_dir / "pretrain"
    if stage is None:
        has_ft = (ft / "adapter_model.safetensors").is_file() or (ft / MODEL_FILE).is_file()
        stage = "finetune" if has_ft else "pretrain"
    if stage not in ("pretrain", "finetune"):
        raise CheckpointError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    if stage == "finetune" and (ft / "adapter_model.safetensors").is_file():
        model = _load_lora_run(ft, device, tok_sha, merge_lora)
    else:
        path = (ft if stage == "finetune" else pt) / MODEL_FILE
        model, metadata = load_model_file(path, device)
        _check_tokenizer(path, metadata, tok_sha)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: model vocabulary ({model.config.vocab_size}) is smaller than the "
                              f"tokenizer's ({tokenizer.vocab_size})")
    return model.eval(), tokenizer


def _check_tokenizer(path, metadata: dict, tok_sha: str) -> None:
    saved = metadata.get("tokenizer_sha256")
    if saved and saved != tok_sha:
        raise CheckpointError(f"{path}: trained with a different tokenizer than {TOKENIZER_FILE} "
                              f"(sha256 {saved[:12]}... vs {tok_sha[:12]}...); retrain or restore the tokenizer")


def _load_lora_run(ft_dir: Path, device, tok_sha: str, merge: bool):
    pointer_path = ft_dir / "base.json"
    try:
        pointer = json.loads(pointer_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{pointer_path}: unreadable pointer to the base checkpoint ({e})") from None
    try:
        base_path = (ft_dir / pointer["base"]).resolve()
    except (KeyError, TypeError):
        raise CheckpointError(f"{pointer_path}: has no 'base' entry naming the base checkpoint") from None
    if not base_path.is_file():
        raise CheckpointError(f"{pointer_path}: base checkpoint {base_path} is missing")
    if pointer.get("sha256") and file_sha256(base_path) != pointer["sha256"]:
        raise CheckpointError(f"{base_path}: changed since the adapter in {ft_dir} was trained on it "
                              "(sha256 differs); fine-tune again")
    model, metadata = load_model_file(base_path, device)
    _check_tokenizer(base_path, metadata, tok_sha)
    try:  # load_adapter reads adapter_config.json, adds the adapters and checks every shape
        peft.load_adapter(model, str(ft_dir))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{ft_dir}: cannot load the LoRA adapter ({e})") from None
    model.to(device)
    return lora.merge_and_unload(model) if merge else model
