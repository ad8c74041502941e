"""The configuration a run directory was made with, read back from its flags.txt."""

import dataclasses
import os

from tf_supermask.training.config import TrainConfig
from tf_supermask.training.run_dir import FLAGS_FILE, parse_flagfile


def _parse_flag_value(text, default):
    if isinstance(default, bool):
        return text.lower() in ("true", "1", "yes")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def run_model_options(run_dir):
    """(model name, MaskOptions, flags.txt text) of a run directory, from its flags.txt."""
    flags_path = os.path.join(run_dir, FLAGS_FILE)
    if not os.path.exists(flags_path):
        raise FileNotFoundError(f"{run_dir} holds no {FLAGS_FILE}: not a run directory")
    with open(flags_path) as stream:
        text = stream.read()
    values = parse_flagfile(text)
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    kwargs = {name: _parse_flag_value(value, defaults[name])
              for name, value in values.items() if name in defaults}
    config = TrainConfig(**kwargs)
    return config.model, config.mask_options(), text
