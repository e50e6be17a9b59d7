"""Record classes without ``dataclasses``: that module imports ``inspect`` (and with it ``ast``,
``dis``, ``tokenize``), about 1.1 MiB of the extension's RSS and ~4 ms of its start-up, for what
a few ``__init__``/``__eq__``/``__repr__`` lines do. Subclasses list their fields in ``__slots__``
(inherited ones first); ``FrozenRecord`` refuses assignment after construction."""

from __future__ import annotations

from typing import Any, Tuple


class Record:
    """Positional or keyword construction over every field of the class and its bases, equality
    over those fields, and a dataclass-like repr."""

    __slots__: Tuple[str, ...] = ()
    _fields: Tuple[str, ...] = ()  # every field, inherited ones first: set once per class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: Tuple[str, ...] = ()
        for klass in reversed(cls.__mro__):
            names += tuple(klass.__dict__.get("__slots__", ()))
        cls._fields = names

    @classmethod
    def fields(cls) -> Tuple[str, ...]:
        return cls._fields

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Telemetry records are made per record (per log line): the class's field names are
        # computed once, and all-positional construction, the usual one, sets them straight.
        names = self._fields
        if len(args) + len(kwargs) != len(names):
            raise TypeError("%s takes %d fields (%s)" % (type(self).__name__, len(names), ", ".join(names)))
        if kwargs:
            values = dict(zip(names, args))
            for name, value in kwargs.items():
                if name not in names or name in values:
                    raise TypeError("%s: unexpected or repeated field %r" % (type(self).__name__, name))
                values[name] = value
            args = tuple(values[name] for name in names)
        for name, value in zip(names, args):
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.fields())

    __hash__ = None  # type: ignore[assignment]  # mutable by default, as a dataclass

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.fields()))


class FrozenRecord(Record):
    """A ``Record`` whose fields cannot be reassigned (hashable by its fields)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("%s is frozen" % type(self).__name__)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(getattr(self, n) for n in self.fields()))
