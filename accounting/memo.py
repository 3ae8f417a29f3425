"""Values derived from an object, remembered by the object's identity.

The DP path shares objects between the queries of one calibration (its noise specs, its
Cost, its mechanism records), so what is derived from them (Decimal sums, JSON, texts)
can be made once per object. Hashing them instead would cost about as much as deriving.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class IdentityMemo(Generic[K, V]):
    """`make(key)` per key object, for the `size` keys used last.

    Each entry holds its key, so the key's id cannot be reused by another object while
    the entry exists. Keys must not be changed after they are first used.
    """

    def __init__(self, make: Callable[[K], V], size: int) -> None:
        self._make = make
        self._size = size
        self._entries: OrderedDict[int, tuple[K, V]] = OrderedDict()

    def __call__(self, key: K) -> V:
        """The value derived from `key`, made on first use."""
        hit = self._entries.get(id(key))
        if hit is not None and hit[0] is key:
            self._entries.move_to_end(id(key))
            return hit[1]
        hit = self._entries[id(key)] = (key, self._make(key))
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return hit[1]
