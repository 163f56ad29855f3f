"""No bf16 arithmetic where the processor lacks it: on such a CPU a bf16 matmul is 100-200x slower
than fp32 (issue 18), so `--dtype fast` must mean fp32 everywhere, the optimizer included.

The tests pretend the processor lacks native bf16 (minilm.runtime.cpu_has_native_bf16 patched to
say no), run the stages' own code (a pretraining step with Muon, a LoRA fine-tuning step, their
evaluations, a greedy generation) and record the dtype of every matmul-class op dispatched, forward
and backward. The guard is shown able to fail: with Muon's iteration forced back to bf16, it is caught.
"""
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minilm import runtime

from minilm.config import PRESETS
from minilm.training import optim

# The aten ops that do a matmul's work (linear and matmul decompose into these before dispatch),
# plus every scaled_dot_product_attention kernel and its backward.
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "mv", "addmv", "dot"}


def is_matmul(name: str) -> bool:
    return name in MATMUL_OPS or "scaled_dot_product" in name


class MatmulDtypes(TorchDispatchMode):
    """Records (op name, dtypes of its tensor inputs) for each matmul-class op that runs inside it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if is_matmul(name):
            tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            self.calls.append((name, tuple(t.dtype for t in tensors)))
        return func(*args, **(kwargs or {}))

    def in_bf16(self) -> list[str]:
        return sorted({name for name, dtypes in self.calls if torch.bfloat16 in dtypes})


@pytest.fixture
def fp32_only_cpu(monkeypatch):
    """This processor, as one without avx512_bf16 / AMX would be seen."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)


def tiny_fast(tmp_path):
    """The tiny preset with --dtype fast and Muon, one step per stage, on 30 kB of minilm's own code
    (found faster than the stdlib's), with a fixed peak FLOP/s (no matmul timed for MFU)."""
    return dataclasses.replace(
        PRESETS["tiny"], out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), dtype="fast",
        device="cpu", optimizer="muon", corpus=str(Path(__file__).parents[1] / "minilm"),
        corpus_max_bytes=30_000, max_iters=1, warmup_iters=1, eval_iters=1, ft_max_iters=1,
        ft_warmup_iters=1, task_train_size=50, peak_flops=1e12)


@pytest.fixture
def few_valid_tasks(monkeypatch):
    """Fine-tuning evaluates on the first 8 validation tasks, not 300: the same code, a fifth of the time."""
    from minilm.stages import finetune as finetune_stage
    full_suite = finetune_stage.task_suite

    def suite(cfg):
        splits = full_suite(cfg)
        return {**splits, "valid": splits["valid"][:8]}
    monkeypatch.setattr(finetune_stage, "task_suite", suite)


def pretrain(cfg):
    from minilm.stages.tokenizer import ensure_tokenizer
    from minilm.stages.pretrain import run_pretrain
    ensure_tokenizer(cfg, log=lambda *_: None)  # outside the recording: no matmul in BPE training
    with MatmulDtypes() as recorded:
        run_pretrain(cfg, log=lambda *_: None)
    return recorded


def test_fast_dtype_runs_no_bf16_matmul_on_a_cpu_without_bf16(tmp_path, fp32_only_cpu, few_valid_tasks):
    from minilm import checkpoint as ckpt
    from minilm.evaluation.evaluate import generate_completions
    from minilm.stages.eval import eval_tasks
    from minilm.stages.tokenizer import ensure_tokenizer
    from minilm.stages.finetune import run_finetune
    cfg = tiny_fast(tmp_path)
    assert runtime.resolve_dtype(cfg.dtype, torch.device("cpu")) == torch.float32
    assert optim.newton_schulz_dtype("cpu") == torch.float32

    pretraining = pretrain(cfg)  # one Muon + AdamW step, and the evaluations before and after it
    assert pretraining.calls and not pretraining.in_bf16(), pretraining.in_bf16()

    with MatmulDtypes() as finetuning:  # one LoRA step (AdamW), with its evaluations
        run_finetune(cfg, log=lambda *_: None)
    assert finetuning.calls and not finetuning.in_bf16(), finetuning.in_bf16()

    model, _ = ckpt.load_model_file(tmp_path / "run" / "pretrain" / ckpt.MODEL_FILE, "cpu")
    tasks = eval_tasks(dataclasses.replace(cfg, eval_tasks_per_split=1))  # one per held-out split
    with MatmulDtypes() as generation:  # the evaluation path: greedy decoding with the KV cache
        generate_completions(model, ensure_tokenizer(cfg, log=lambda *_: None), tasks, max_new_tokens=4)
    assert generation.calls and not generation.in_bf16(), generation.in_bf16()


def test_the_guard_catches_muon_iterating_in_bf16(tmp_path, fp32_only_cpu, monkeypatch):
    """What the guard exists for: torch.optim.Muon's bf16 Newton-Schulz (11 s per `small` step on an
    AVX2-only CPU). Switched back to bf16, the same pretraining step is caught, in the optimizer's ops."""
    monkeypatch.setattr(optim, "newton_schulz_dtype", lambda device_type: torch.bfloat16)
    recorded = pretrain(tiny_fast(tmp_path))
    assert "addmm" in recorded.in_bf16() and "mm" in recorded.in_bf16()  # X X^T and the two addmm's


def test_the_recorder_sees_bf16_autocast_in_forward_and_backward():
    """The recorder itself: bf16 autocast's matmuls, attention and the backward's are all seen."""
    from minilm.model.gpt import GPT
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(PRESETS["tiny"].model, block_size=16))
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with MatmulDtypes() as recorded:
        with runtime.autocast(torch.device("cpu"), torch.bfloat16):
            logits = model(idx)
        logits.float().sum().backward()
    names = {name for name, _ in recorded.calls}
    assert {"mm", "addmm"} <= set(recorded.in_bf16()) and any("scaled_dot_product" in n or n == "bmm" for n in names)
