"""Noise drawn ahead (accounting/reservoir.py): every draw is handed out exactly once.

The draw function here hands out consecutive integers, so a draw handed out twice, or one
a forked child shares with its parent, shows up as a repeated number. (That the draws
have the right distribution is tested on the real samplers in test_noise_paths.py.)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable

import pytest

from accounting.reservoir import NoiseReservoir


class Counter:
    """A stand-in sampler: consecutive integers, and a log of what was drawn."""

    def __init__(self) -> None:
        self.next = itertools.count()
        self.calls: list[tuple[Hashable, int]] = []

    def __call__(self, key: Hashable, n: int) -> list[int]:
        self.calls.append((key, n))
        return [next(self.next) for _ in range(n)]


def test_each_draw_is_handed_out_once_across_blocks() -> None:
    draw = Counter()
    res = NoiseReservoir(draw, block=16)
    taken = [x for n in [1, 5, 16, 3, 0, 7, 40, 2] for x in res.take("a", n)]
    assert len(taken) == 74
    assert len(set(taken)) == len(taken)
    drawn = sum(n for _, n in draw.calls)
    assert drawn == len(taken) + res.held()
    # A refill draws a block, or what a larger request lacks, in one call.
    assert [n for _, n in draw.calls] == [16, 16, 40, 16]


def test_keys_have_their_own_draws() -> None:
    draw = Counter()
    res = NoiseReservoir(draw, block=8)
    a = res.take(("laplace", 1.0), 3)
    b = res.take(("laplace", 2.0), 3)
    assert set(a).isdisjoint(b)
    assert [k for k, _ in draw.calls] == [("laplace", 1.0), ("laplace", 2.0)]


def test_an_evicted_key_loses_its_draws_for_good() -> None:
    draw = Counter()
    res = NoiseReservoir(draw, block=8, max_keys=2)
    first = res.take("a", 1)  # "a" holds 7 more
    res.take("b", 1)
    res.take("c", 1)  # evicts "a" (least recently used): its 7 draws are dropped
    again = res.take("a", 7)
    assert set(again).isdisjoint(range(0, 8))  # none of a's first block comes back
    assert first == [7]  # draws are taken from the end of a block
    assert res.held() == 7 + 1  # c's 7 and a's new block's 1 ("b" was evicted in turn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_draws() -> None:
    draw = Counter()
    res = NoiseReservoir(draw, block=64)
    res.take("a", 1)  # the parent now holds 63 draws: 0..62
    held = set(range(63))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take some draws and report them
        try:
            os.close(read)
            os.write(write, ",".join(map(str, res.take("a", 10))).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = {int(x) for x in f.read().split(",")}
    os.waitpid(pid, 0)
    assert len(child) == 10
    assert child.isdisjoint(held)  # the child drew afresh
    assert set(res.take("a", 10)) <= held  # the parent still uses its own
