"""Named registries of known components.

Configs select components by short names (``objective: cfm``), never by import strings, so a
config file can only ever reach code that this package registered on purpose.
"""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fmboost.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> component mapping with a decorator for registration.

    Example:
        >>> OBJECTIVES = Registry("objective")
        >>> @OBJECTIVES.register("cfm")
        ... class CouplingFlowMatching: ...
        >>> OBJECTIVES.get("cfm")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(component: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = component
            return component

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """Return the component called ``name``; ``key`` names the config key for the error."""
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
