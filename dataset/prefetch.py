"""Ordered read-ahead in threads: decoding the next inputs while the consumer works on the current one.

Image and video decoders release the GIL, so a few threads keep a model fed
without processes. Both stages read their inputs through this one helper.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int,
             ahead: int | None = None) -> Iterator[tuple[T, R | Exception]]:
    """``(item, fn(item))`` in input order, at most ``ahead`` (default ``4 * workers``) computed in advance.

    An exception raised by ``fn`` is yielded in place of its result, so the
    caller, which knows what the item was, decides whether to report or raise.
    """
    workers = max(workers, 1)
    limit = max(ahead if ahead is not None else 4 * workers, 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    pending: deque[tuple[T, Future[R]]] = deque()

    def take() -> tuple[T, R | Exception]:
        item, future = pending.popleft()
        try:
            return item, future.result()
        except Exception as exc:
            return item, exc

    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= limit:
                yield take()
        while pending:
            yield take()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
