"""Plain configuration objects and their absl flags, from one definition.

Each configuration is a dataclass whose fields carry their help text (and
choices) in metadata; binaries define absl flags from the fields and turn
parsed flags back into the dataclass, so the library never reads ``FLAGS``.
The same fields give the run's ``flags.txt`` and the default run folder name
(a hash over non-default fields, so adding a field keeps old names valid).
"""

import dataclasses
import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Type


def option(default, help: str, choices: Optional[Sequence[str]] = None):
    """A dataclass field carrying its flag help text and, for enums, its choices."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _flag_type(field):
    if field.metadata.get("choices"):
        return "enum"
    if isinstance(field.default, bool):
        return "bool"
    if isinstance(field.default, int):
        return "integer"
    if isinstance(field.default, float):
        return "float"
    return "string"


def define_flags(config_type: Type, flag_values=None, skip: Sequence[str] = ()):
    """Defines one absl flag per field of `config_type` (skipping names already defined)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for field in dataclasses.fields(config_type):
        if field.name in skip or field.name in flag_values:
            continue
        kind, help_text = _flag_type(field), field.metadata.get("help", "")
        if kind == "enum":
            flags.DEFINE_enum(field.name, field.default, field.metadata["choices"], help_text,
                              flag_values=flag_values)
        else:
            getattr(flags, f"DEFINE_{kind}")(field.name, field.default, help_text,
                                             flag_values=flag_values)


def from_flags(config_type: Type, flag_values=None):
    """Builds `config_type` from parsed absl flags."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    return config_type(**{field.name: flag_values[field.name].value
                          for field in dataclasses.fields(config_type)})


def non_default_fields(config) -> Dict[str, Any]:
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
            if getattr(config, field.name) != field.default}


def config_hash(config, exclude: Sequence[str] = ()) -> str:
    """Short hash over the non-default fields (minus `exclude`)."""
    fields = {key: value for key, value in non_default_fields(config).items() if key not in exclude}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def to_flagfile(config, exclude: Sequence[str] = ()) -> str:
    """Every field as a `--name=value` line: a flagfile that reproduces the run.

    Fields the configuration reports through an ``inactive_fields()`` method (flags
    that cannot change this run, e.g. PatchesInit's options without --init=patches)
    are left out, so changing their defaults never makes old runs look different.
    """
    inactive = set(config.inactive_fields()) if hasattr(config, "inactive_fields") else set()
    lines = []
    for field in dataclasses.fields(config):
        if field.name in exclude or field.name in inactive:
            continue
        value = getattr(config, field.name)
        if isinstance(value, bool):
            lines.append(f"--{field.name}" if value else f"--no{field.name}")
        elif value is not None:
            lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"
