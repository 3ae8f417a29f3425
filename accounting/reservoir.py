"""Noise drawn ahead in blocks, for the short vectors of everyday answers.

A typical DP answer noises a few groups per primitive. Noising each such vector with its
own sampler call cost ~50 us of call overhead for a few us of sampling, once per
primitive, on the critical path of every query. A block of BLOCK draws from the same
exact sampler costs about as much as one short call, so noise is drawn ahead, a block at
a time, per (mechanism, scale), and handed out one draw at a time.

Why this is the same mechanism. The noise of discrete Laplace and discrete Gaussian is
independent of the value it is added to: the release `x + Z` with `Z` drawn before `x`
is known has exactly the distribution of one drawn after. What must hold, and does here:

- every draw is handed out once and never again: it is removed from its block under a
  lock, and a block that is dropped (an evicted scale) is discarded, not reused;
- draws never cross a fork: a process that inherits blocks from its parent (a dpproxy
  worker forked after start-up) would otherwise hand out the same noise as its parent or
  a sibling, so blocks are kept per process id and a child starts empty;
- blocks come from the exact samplers (accounting.sampler, or OpenDP on a zero vector),
  never from a seeded or floating-point generator.

Draws are held only in this process's memory, like every answer before it is sent.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

# Draws per refill: one refill costs about one short sampler call, so ~64 short answers
# share it. Larger blocks only hold more memory for scales that are rarely used again.
BLOCK = 256
# Scales kept at once (LRU): a dashboard's calibrations repeat; a one-off scale's block
# is dropped when evicted. At most MAX_KEYS * BLOCK ints are held (~1.5 MB).
MAX_KEYS = 128


class NoiseReservoir:
    """Pre-drawn noise per key; `draw(key, n)` makes `n` fresh independent draws."""

    def __init__(self, draw: Callable[[Hashable, int], list[int]], block: int = BLOCK,
                 max_keys: int = MAX_KEYS) -> None:  # fmt: skip
        self._draw = draw
        self._block = block
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._blocks: OrderedDict[Hashable, list[int]] = OrderedDict()
        self._pid = os.getpid()

    def take(self, key: Hashable, n: int) -> list[int]:
        """`n` draws for `key`, each handed out for the first and only time."""
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: the parent's draws are not ours
                self._blocks.clear()
                self._pid = os.getpid()
            block = self._blocks.get(key)
            if block is None:
                block = self._blocks[key] = []
                if len(self._blocks) > self._max_keys:
                    self._blocks.popitem(last=False)  # its draws are discarded, never reused
            else:
                self._blocks.move_to_end(key)
            if len(block) < n:
                block.extend(self._draw(key, max(self._block, n - len(block))))
            out = block[len(block) - n :]
            del block[len(block) - n :]
            return out

    def held(self) -> int:
        """How many draws are held, over all keys (for tests and metrics)."""
        with self._lock:
            return sum(len(b) for b in self._blocks.values())
