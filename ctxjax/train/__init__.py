"""Training: `train_and_evaluate(config, workdir)` runs a recipe from configs/ (see ctxjax/train/loop.py)."""

from ctxjax.train.configs import apply_overrides, load_config
from ctxjax.train.defaults import default_config
from ctxjax.errors import GateFailed, TrainingDiverged
from ctxjax.train.loop import train_and_evaluate

__all__ = ["apply_overrides", "default_config", "load_config", "train_and_evaluate", "GateFailed",
           "TrainingDiverged"]
