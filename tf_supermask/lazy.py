"""Package attributes imported on first use (PEP 562), so that importing a light
submodule (a configuration, say) does not import the package's Keras code."""

import importlib


def lazy_exports(package, exports):
    """A module-level ``__getattr__`` for `package` serving `exports`.

    Args:
      package: the package's ``__name__``.
      exports: {attribute: submodule name relative to `package`}.
    """

    def __getattr__(name):
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    return __getattr__
