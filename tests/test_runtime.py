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
