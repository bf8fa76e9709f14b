"""nipc.memo: recent NSS / auth_to_local answers, reused for a bounded time only."""

from __future__ import annotations

import pytest

from nipc import memo
from nipc.errors import NipcError


def test_answers_are_reused_until_they_expire_and_refusals_never() -> None:
    now = [0.0]
    asked: list[str] = []
    table: memo.Memo[str, int] = memo.Memo(ttl=5.0, clock=lambda: now[0])

    def ask(key: str) -> int:
        asked.append(key)
        if key == "nobody":
            raise NipcError("EPERM", "no such account")
        return len(key)

    assert table.answer("alice", ask) == 5 and table.answer("alice", ask) == 5
    assert asked == ["alice"]
    now[0] = 5.0  # expired: asked afresh (a changed account shows within the TTL)
    assert table.get("alice") is None and table.answer("alice", ask) == 5
    for _ in range(2):
        with pytest.raises(NipcError):
            table.answer("nobody", ask)
    assert asked == ["alice", "alice", "nobody", "nobody"]


def test_the_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo, "MAX_ENTRIES", 3)
    table: memo.Memo[int, int] = memo.Memo()
    for n in range(10):
        table.put(n, n)
    assert len(table._table) <= 3 and table.get(9) == 9
