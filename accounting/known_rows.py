"""The ledger rows one process last read or wrote, to charge without reading them first.

A charge must be decided on the current dataset and budget rows. Where this process was
the last to change them (one proxy, or one worker per analyst), the rows it wrote are
still current, and the next charge can be decided on them and written at once: one
round trip instead of two. The write checks each row's version as any optimistic write
does, so a row another writer changed meanwhile (another replica or worker, an admin, a
renewed period) only makes the write fail and the charge be decided again on rows read
afresh; it never lets a stale decision through.

Nothing here is trusted for a refusal (those are decided on fresh rows) or for a budget
with a renewal period (its period depends on the database's clock).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

# Budget rows remembered (least recently charged forgotten first).
KNOWN_PAIRS = 4096
# After a lost race on a dataset, the next charges on it this many batches read first:
# several writers are changing its row, so speculating would only cost a round trip.
PAUSE_AFTER_LOSS = 8
# After a batch on a dataset lost every optimistic try and took the row locks, this many
# next batches on it take the locks at once (contended rows: a try only costs).
LOCK_AFTER_FALLBACK = 8

Pair = tuple[str, str]  # (dataset, analyst)


class KnownRows:
    """Dataset rows and budget rows as this process last read or wrote them."""

    def __init__(self) -> None:
        self._datasets: dict[str, dict[str, Any]] = {}
        self._budgets: OrderedDict[Pair, dict[str, Any]] = OrderedDict()
        self._pause: dict[str, int] = {}
        self._locking: dict[str, int] = {}

    def rows_for(self, pairs: Iterable[Pair]) -> tuple[dict[str, dict[str, Any]], dict[Pair, dict[str, Any]]] | None:
        """Copies of the rows of every pair (and its dataset), or None where any is
        unknown, has a renewal period, or its dataset is paused after a lost race."""
        pairs = list(pairs)
        datasets = {d for d, _ in pairs}
        if _count_down(self._pause, datasets):
            return None
        drows, brows = {}, {}
        for d in datasets:
            if d not in self._datasets:
                return None
            drows[d] = dict(self._datasets[d])
        for p in pairs:
            row = self._budgets.get(p)
            if row is None or _renews(row):
                return None
            self._budgets.move_to_end(p)
            brows[p] = dict(row)
        return drows, brows

    def remember(self, drows: dict[str, dict[str, Any]], brows: dict[Pair, dict[str, Any]]) -> None:
        """Rows now current in the ledger (as read, or as just written)."""
        self._datasets.update(drows)
        for p, row in brows.items():
            self._budgets[p] = row
            self._budgets.move_to_end(p)
        while len(self._budgets) > KNOWN_PAIRS:
            self._budgets.popitem(last=False)

    def lost(self, pairs: Iterable[Pair]) -> None:
        """A write on these rows found them changed: forget them, pause their datasets."""
        for d, a in pairs:
            self._datasets.pop(d, None)
            self._budgets.pop((d, a), None)
            self._pause[d] = PAUSE_AFTER_LOSS

    def contended(self, datasets: Iterable[str]) -> bool:
        """Whether a batch on these datasets should take the row locks at once (counts
        the batch against each dataset's remaining lock-first batches)."""
        return _count_down(self._locking, datasets)

    def fell_back(self, datasets: Iterable[str]) -> None:
        """Every optimistic try on these datasets lost: lock first for a while."""
        for d in datasets:
            self._locking[d] = LOCK_AFTER_FALLBACK


def _count_down(counters: dict[str, int], keys: Iterable[str]) -> bool:
    """Whether any of `keys` has batches left on its counter (each such one spends one)."""
    active = [k for k in keys if counters.get(k)]
    for k in active:
        counters[k] -= 1
    return bool(active)


def _renews(row: dict[str, Any]) -> bool:
    period = row.get("renewal_period")
    return period is not None and period.total_seconds() > 0
