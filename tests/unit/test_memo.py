"""Values remembered by their key object's identity (accounting/memo.py)."""

from __future__ import annotations

from accounting.memo import IdentityMemo


def test_a_value_is_made_once_per_object_not_per_equal_value() -> None:
    made: list[list[int]] = []

    def make(key: list[int]) -> int:
        made.append(key)
        return sum(key)

    memo: IdentityMemo[list[int], int] = IdentityMemo(make, 8)
    a, b = [1, 2], [1, 2]
    assert (memo(a), memo(a), memo(b)) == (3, 3, 3)
    assert len(made) == 2 and made[0] is a and made[1] is b


def test_the_least_recently_used_key_is_dropped_and_made_again() -> None:
    made: list[str] = []
    memo: IdentityMemo[str, str] = IdentityMemo(lambda k: made.append(k) or k.upper(), 2)
    x, y, z = "x" * 3, "y" * 3, "z" * 3
    memo(x), memo(y), memo(x), memo(z)  # y is the least recently used when z comes
    memo(x)
    memo(y)
    assert made == [x, y, z, y]


def test_an_entry_holds_its_key_so_its_id_is_never_another_objects() -> None:
    memo: IdentityMemo[list[int], int] = IdentityMemo(len, 4)
    first = [1, 2, 3]
    assert memo(first) == 3
    key = id(first)
    del first
    other = [9]  # may not take the id of the held list
    assert id(other) != key and memo(other) == 1
