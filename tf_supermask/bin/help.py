"""``--help`` for the binaries: what the binary does, then its own flags in groups.

absl's ``--help`` lists the flags of the ``__main__`` module, which for an installed
console script is the generated wrapper (no flags at all); ``--helpfull`` lists every
flag of every imported module in one block. Here the binary's module docstring comes
first, then the flags its module defines itself, then the flags its configuration
declares, one section per group of the configuration (its ``GROUPS``, see
``tf_supermask.training.config.flag_groups``): the binary's own group first.
"""

import sys
import textwrap

HELP_ARGS = ("--help", "-help", "-h", "--h", "-?", "--helpshort", "-helpshort")
WIDTH = 100


def help_requested(argv):
    """Whether `argv` asks for the short help (``--helpfull`` is left to absl)."""
    return any(arg in HELP_ARGS for arg in argv[1:])


def _format_flag(flag):
    default = flag.default
    if isinstance(default, bool):
        head = f"--[no]{flag.name}"
        default_text = "true" if default else "false"
    else:
        head = f"--{flag.name}"
        default_text = repr(default) if isinstance(default, str) else str(default)
        if isinstance(default, (list, tuple)):
            default_text = "'" + ",".join(str(value) for value in default) + "'"
    body = f"{flag.help} (default: {default_text})"
    return (f"  {head}\n" + textwrap.fill(body, WIDTH, initial_indent=" " * 6,
                                          subsequent_indent=" " * 6))


def config_groups(config_class, own_title):
    """[(title, [field names])] of `config_class`, one per group of its GROUPS; the
    binary's own group (title None) comes first, under `own_title`."""
    from tf_supermask.training.config import flag_groups

    groups = flag_groups(config_class)
    # The binary's own flags come first: they are what sets it apart.
    return ([(own_title, names) for title, names in groups if title is None]
            + [(title, names) for title, names in groups if title is not None])


def help_text(module, config_class=None, flag_values=None):
    """The ``--help`` text of the binary defined in `module` (its docstring, then flags)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    program = module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    sections = [(module.__doc__ or "").strip()]
    groups = []
    if config_class is not None:
        groups.extend(config_groups(config_class, f"tf-supermask-{program}"))
    own = [flag.name for flag in flag_values.get_flags_for_module(module.__name__)]
    if own:
        groups.insert(0, (f"tf-supermask-{program}", own))
    for title, names in groups:
        names = [name for name in names if name in flag_values]
        if names:
            sections.append(f"{title} flags:\n" + "\n".join(
                _format_flag(flag_values[name]) for name in names))
    sections.append("Every flag can also be given in a --flagfile (one --name=value per line). "
                    "--helpfull lists absl's own flags too.")
    return "\n\n".join(sections) + "\n"


def print_help_and_exit(module, config_class=None):
    """Prints `help_text` to stdout and exits with status 0."""
    sys.stdout.write(help_text(module, config_class))
    sys.stdout.flush()
    sys.exit(0)
