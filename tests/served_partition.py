"""A stand-in for the shared consumer that serves one partition preset fetches, to drive
the Kafka source's per-partition reader fetch by fetch (the broker tests cover Kafka)."""

from __future__ import annotations

from typing import Any


class ServedMessage:
    """The parts of a confluent-kafka message the source reads."""

    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None


class ServedConsumer:
    """A shared consumer that serves preset fetches of one partition."""

    bootstrap = "served:9092"

    def __init__(self, fetches: list[list[Any]]) -> None:
        self.fetches = list(fetches)

    def add(self, topic: str, idx: int, offset: int) -> int:
        return offset

    def take(self, topic: str, idx: int) -> list[Any]:
        return self.fetches.pop(0) if self.fetches else []

    def hold(self, topic: str, idx: int, held: bool) -> None:
        pass

    def high_watermark(self, topic: str, idx: int) -> None:
        return None

    def end_offsets(self, topic: str, idx: int) -> tuple[int, int] | None:
        return None

    def remove(self, topic: str, idx: int) -> None:
        pass
