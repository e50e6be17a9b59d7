"""records.py: the small record classes that stand in for dataclasses."""

from __future__ import annotations

import pytest

from sentry_ext.util.records import FrozenRecord, Record
from sentry_ext.delivery.request import Request
from sentry_ext.awslambda.telemetry_records import Start


class Point(Record):
    __slots__ = ("x", "y")


class Point3(Point):
    __slots__ = ("z",)


class Frozen(FrozenRecord):
    __slots__ = ("a",)


def test_fields_construction_equality_and_repr() -> None:
    assert Point3.fields() == ("x", "y", "z")
    p = Point3(1, 2, z=3)
    assert (p.x, p.y, p.z) == (1, 2, 3) and p == Point3(1, 2, 3) and p != Point3(1, 2, 4)
    assert p != Point(1, 2) and repr(p) == "Point3(x=1, y=2, z=3)"
    p.x = 5  # a plain record is mutable
    assert p.x == 5
    with pytest.raises(TypeError):
        Point(1)
    with pytest.raises(TypeError):
        Point(1, x=2)
    with pytest.raises(TypeError):
        Point(1, w=2)
    assert Point3(z=3, y=2, x=1) == Point3(1, 2, 3) and Point3(1, z=3, y=2).fields() == ("x", "y", "z")
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]  # slots: no stray attributes


def test_frozen_records_refuse_assignment_and_hash_by_value() -> None:
    f = Frozen(1)
    with pytest.raises(AttributeError):
        f.a = 2  # type: ignore[misc]
    assert hash(f) == hash(Frozen(1)) and f == Frozen(1)
    start = Start("platform.start", "", "rid", None, None)
    assert start.request_id == "rid" and start.type == "platform.start"


def test_request_defaults() -> None:
    req = Request("/api/1/envelope/", {}, b"x", "k")
    assert req.attempts == 0 and req.event_id is None and req.received_at > 0
    assert req == Request("/api/1/envelope/", {}, b"x", "k", received_at=req.received_at)


def test_failure_event_ids_are_version_4_uuids() -> None:
    import uuid

    from sentry_ext.util.ids import uuid4_hex

    ids = {uuid4_hex() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value
