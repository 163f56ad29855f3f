"""What every stage shares: the run's config file and the task suite it trains on."""
from __future__ import annotations

from pathlib import Path

from minilm import checkpoint as ckpt
from minilm.config import RunConfig, to_dict
from minilm.data.tasks import generate_suite
from minilm.training.distributed import DistInfo


def task_suite(cfg: RunConfig) -> dict:
    """The task suite a run trains on: {split: [task, ...]}."""
    return generate_suite(seed=cfg.task_seed, n_train=cfg.task_train_size, steps_weight=cfg.task_steps_weight)


def save_config(cfg: RunConfig, dist: DistInfo) -> None:
    """RUN_DIR/config.json, the settings of the stage that runs (main process only)."""
    if dist.is_main:
        ckpt.write_json_atomic(Path(cfg.out_dir) / ckpt.CONFIG_FILE, to_dict(cfg))
