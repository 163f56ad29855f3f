"""Device and dtype choice: "auto" keeps fp32 on a CPU, "fast" takes bf16 only where it is native."""
import pytest
import torch

from minilm import runtime
from minilm.config import ConfigError


@pytest.mark.parametrize("native", [True, False])
def test_fast_dtype_follows_the_processor(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.resolve_dtype("fast", cpu) == (torch.bfloat16 if native else torch.float32)
    assert runtime.resolve_dtype("auto", cpu) == torch.float32
    assert runtime.resolve_dtype("fast", torch.device("cuda")) == torch.bfloat16
    assert runtime.resolve_dtype("bfloat16", cpu) == torch.bfloat16


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="--dtype must be auto, fast, float32 or bfloat16"):
        runtime.resolve_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("value, native", [("0", False), ("1", True)])
def test_native_bf16_environment_override_decides_dtype_and_muon(monkeypatch, value, native):
    """MINILM_NATIVE_BF16 forces either path whatever /proc/cpuinfo says: autocast and Muon's
    Newton-Schulz iteration both follow it, and the machine line says it was forced."""
    from minilm.training.optim import newton_schulz_dtype
    monkeypatch.setenv(runtime.BF16_ENV, value)
    bf16_if_native = torch.bfloat16 if native else torch.float32
    assert runtime.cpu_has_native_bf16() is native
    assert runtime.resolve_dtype("fast", torch.device("cpu")) == bf16_if_native
    assert newton_schulz_dtype("cpu") == bf16_if_native
    assert newton_schulz_dtype("cuda") == torch.bfloat16  # a GPU has bf16 matmuls whatever the CPU
    assert f"native bf16: {'yes' if native else 'no'} ({runtime.BF16_ENV}={value})" in runtime.machine_summary()


@pytest.mark.parametrize("flags, found", [("avx2 avx512f avx512_bf16", ["avx512_bf16"]),
                                          ("avx2 amx_tile amx_bf16", ["amx_bf16"]),
                                          ("avx2 avx512f avx512_vnni", [])])
def test_bf16_flags_are_read_from_cpuinfo(tmp_path, flags, found):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags}\n\n" * 2)
    assert runtime._cpuinfo_bf16_flags(str(cpuinfo)) == found
    assert runtime._cpuinfo_bf16_flags(str(tmp_path / "missing")) == []  # not Linux: no native bf16 claimed


def test_without_override_the_processor_flags_decide(monkeypatch):
    monkeypatch.delenv(runtime.BF16_ENV, raising=False)
    flags = runtime._cpuinfo_bf16_flags()
    assert runtime.cpu_has_native_bf16() is bool(flags)
    assert (f"native bf16: yes ({', '.join(flags)})" if flags else "native bf16: no") in runtime.machine_summary()


def test_a_bad_native_bf16_override_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(runtime.BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="MINILM_NATIVE_BF16 must be 0 .* or 1 .*, got 'yes'"):
        runtime.resolve_dtype("fast", torch.device("cpu"))


def test_machine_summary_names_processor_cores_and_torch():
    line = runtime.machine_summary()
    assert line.startswith(f"machine: {runtime.cpu_model_name()}, ")
    assert f"torch {torch.__version__}" in line and " cores " in line and "\n" not in line
