"""A tiny name -> object registry used for mask modes, initializers, models, datasets."""

from typing import Callable, Dict, Generic, Iterator, Optional, Sequence, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; flags choose among the registered names.

    Args:
      kind: what the registry holds, used in error messages ("model", "mask mode").
      names: the names it may hold (a list of ``tf_supermask.choices``, which the
        flags offer without importing Keras), or None for any name. Registering an
        unlisted name raises; ``check_complete`` raises for a listed one never
        registered.
    """

    def __init__(self, kind: str, names: Optional[Sequence[str]] = None):
        self.kind = kind
        self.allowed = None if names is None else tuple(names)
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`."""

        if self.allowed is not None and name not in self.allowed:
            raise ValueError(f"{self.kind} {name!r} is not listed in tf_supermask.choices "
                             f"({', '.join(self.allowed)}); add it there first")

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def check_complete(self):
        """Raises a RuntimeError if a name of `names` was never registered (call it at the
        end of the module that registers them)."""
        missing = [name for name in self.allowed or () if name not in self._entries]
        if missing:
            raise RuntimeError(f"{self.kind} {', '.join(map(repr, missing))} listed in "
                               "tf_supermask.choices but never registered")

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
