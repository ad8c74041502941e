"""Exporting masked networks: folded SavedModels (``saved_model``) and the compact
seed-plus-bitmask file (``compact``). A finished run directory is exported by
``tf_supermask.tools.export_run``."""

from tf_supermask.export.compact import (COMPACT_FILE, CompactFormatError, load_compact,
                                         load_options, read_compact_header, save_compact)
from tf_supermask.export.saved_model import (SAVED_MODEL_DIR, export_saved_model, fold_masks,
                                             folded_kernel)

__all__ = ["CompactFormatError", "COMPACT_FILE", "SAVED_MODEL_DIR", "export_saved_model",
           "fold_masks", "folded_kernel", "load_compact", "load_options", "read_compact_header",
           "save_compact"]
