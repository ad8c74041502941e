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


def option(default, help: str, choices: Optional[Sequence[str]] = None, stable_default=None):
    """A dataclass field carrying its flag help text and, for enums, its choices.

    `stable_default`: for a field whose default an environment variable may change,
    the default without it; ``config_hash`` compares with it, so that a run made
    under the variable gets a run folder of its own.
    """
    metadata = {"help": help, "choices": choices}
    if stable_default is not None:
        metadata["stable_default"] = stable_default
    return dataclasses.field(default=default, metadata=metadata)


class ConfigGroup:
    """A group of related fields (a dataclass deriving from this) with its own checks.

    A binary's configuration composes groups by dataclass inheritance, so every
    field keeps its flat flag name and attribute (``--lr``, ``config.lr``); its
    ``GROUPS`` lists them in the order of its ``--help`` sections. ``Group.of(config)``
    takes one group out of a composed configuration, for code that needs only it.

    Class attributes:
      TITLE: the group's ``--help`` section (None: the binary's own flags).
      BOUNDS: {field: (test, what the flag must be)} beyond "finite", checked by
        ``check_fields``.
    """

    TITLE: Optional[str] = None
    BOUNDS: Dict[str, Any] = {}

    def __post_init__(self):
        type(self).check(self)

    def validate(self):
        """The group's own checks (beyond ``check_fields``'s): a ValueError naming the flag
        for an unusable value. A composed configuration calls ``Group.validate(config)``
        for each group, so it uses only this group's fields (and never ``super()``)."""

    @classmethod
    def check(cls, config):
        """Every check of this group's fields of `config`: choices, finite numbers and
        ``BOUNDS`` (``check_fields``), then ``cls.validate``."""
        check_fields(config, cls.BOUNDS, cls.field_names())
        cls.validate(config)

    @classmethod
    def field_names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def applies(cls, config) -> bool:
        """Whether the group's flags can change `config`'s run (else they are neither
        checked nor written to flags.txt)."""
        return True

    @classmethod
    def of(cls, config):
        """This group's fields of `config` (a configuration composing it), as a `cls`."""
        return cls(**{name: getattr(config, name) for name in cls.field_names()})


def check_fields(config, bounds=None, names=None):
    """Refuses non-finite floats in the fields `names` of `config` (default: all), values
    outside a field's choices and values outside `bounds` ({name: (test, description)}),
    before anything is written."""
    import math

    bounds = bounds or {}
    fields = {field.name: field for field in dataclasses.fields(config)}
    for name in fields if names is None else names:
        field, value = fields[name], getattr(config, name)
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}")
        if name in bounds and not isinstance(value, bool):
            test, description = bounds[name]
            if not test(value):
                raise ValueError(f"--{name} must be {description}, got {value}")


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
            if getattr(config, field.name) != field.metadata.get("stable_default",
                                                                 field.default)}


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
