"""The base class of every wire record."""

from __future__ import annotations

from typing import Literal

import msgspec


class Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A frozen, tagged, versioned wire record.

    ``type`` (the tag) names the record kind; ``v`` is its major version.
    Minor versions only add optional fields, which older readers ignore.
    A record with an unknown major version is rejected at the boundary.
    """

    v: Literal[1] = 1


SUPPORTED_MAJOR = 1
