"""Pages of an account's transactions across its shards (one shard, or every stripe).

Each shard answers its rows newest first *by journal position* (seq descending): seq is
the only order a shard's rows are appended in. Time is not: a cross-shard credit leg
carries its debtor shard's time, so within one shard created_at_ms is not monotonic in
seq. A page is therefore a k-way merge of the shards' seq-ordered streams (the stream
whose next row is newest by time goes first), and the cursor keeps, per shard, the seq
of the last row *emitted* from that shard. Every row is then emitted exactly once, and
rows committed after the first page do not slip into later pages (a shard that emitted
nothing yet is pinned just above the newest row it answered, or past its end).
"""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["SEQ_END", "SEQ_TOP", "merge_page"]

SEQ_TOP = 2**62  # "from the newest row" (no cursor for that shard yet)
SEQ_END = 1  # seq starts at 1: nothing is below it, the shard is exhausted


def merge_page(
    answers: dict[int, list[dict[str, Any]]], cursor: dict[int, int], limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, int] | None]:
    """Merge shards' answers into one page of at most `limit` rows.

    `answers[s]` holds shard s's rows with seq < cursor.get(s, SEQ_TOP), seq descending,
    at most limit + 1 of them (one more than a page, to know whether more follow).
    Returns the page as (shard, row) pairs and the next cursor, or None after the last page.
    """
    heap: list[tuple[int, int, int, int]] = []
    for shard, rows in answers.items():
        if rows:
            heap.append((-rows[0]["created_at_ms"], -rows[0]["seq"], shard, 0))
    heapq.heapify(heap)
    page: list[tuple[int, dict[str, Any]]] = []
    taken: dict[int, int] = {}
    while heap and len(page) < limit:
        _, _, shard, index = heapq.heappop(heap)
        rows = answers[shard]
        page.append((shard, rows[index]))
        taken[shard] = index + 1
        if index + 1 < len(rows):
            after = rows[index + 1]
            heapq.heappush(heap, (-after["created_at_ms"], -after["seq"], shard, index + 1))
    more = any(taken.get(shard, 0) < len(rows) for shard, rows in answers.items())
    if not more:
        return page, None
    next_cursor = dict(cursor)
    for shard, rows in answers.items():
        if taken.get(shard):
            next_cursor[shard] = rows[taken[shard] - 1]["seq"]
        elif rows:
            next_cursor[shard] = rows[0]["seq"] + 1
        else:
            next_cursor[shard] = SEQ_END
    return page, next_cursor
