"""Training runs: configuration, run directories, optimizers, the training loop.

The names below are imported on first use: ``tf_supermask.training.config``
(and so a binary's ``--help``) does not import Keras.
"""

from tf_supermask.lazy import lazy_exports

_EXPORTS = {"TrainConfig": "config", "RunDirError": "run_dir", "create_model": "trainer",
            "default_run_dir": "trainer", "train": "trainer"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
