"""Shared test set-up: hypothesis profiles and small helpers.

Profiles: "ci" (the default) keeps the suite fast and deterministic; "dev" explores more.
Pick one with HYPOTHESIS_PROFILE=dev pytest.
"""
import os

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
