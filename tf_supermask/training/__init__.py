"""Training runs: configuration, run directories, optimizers, the training loop."""

from tf_supermask.training.config import TrainConfig
from tf_supermask.training.run_dir import RunDirError
from tf_supermask.training.trainer import create_model, default_run_dir, train

__all__ = ["TrainConfig", "RunDirError", "create_model", "default_run_dir", "train"]
