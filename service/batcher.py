"""Micro-batching of model calls across concurrent requests, and admission control.

A model call on a batch of 64 crops costs little more than one on 4 crops on
an accelerator, so crops from requests that arrive together are run in one
call: the first job of a batch waits at most ``max_wait_s`` for others with
the same key (same picture size, same model settings) to join, then one
worker thread runs the model off the event loop and hands each job its rows.
The queue of waiting jobs, the number of requests admitted to model work,
their expected wait (a latency budget) and the decoded pixels they hold are
all bounded: past a bound a request is refused at once (503 with
Retry-After) instead of piling up pixels in memory or waiting without end.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """More work is waiting than a configured bound allows; ``code`` names the bound, ``retry_after`` (seconds)
    is when it may have room again, where that can be estimated."""

    def __init__(self, message: str, code: str = "overloaded", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


@dataclass
class _Job:
    key: Hashable
    items: Sequence[Any]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


BatchFn = Callable[[Hashable, list[Any]], Sequence[Any]]


class MicroBatcher:
    """Runs ``fn(key, items)`` in one worker thread on the concatenated items of jobs sharing a key.

    ``fn`` returns one result per item, in order; each job gets back the
    results of its own items. A job larger than ``max_items`` runs alone.
    ``on_batch(items, jobs)`` is called after every model call (for metrics).
    """

    def __init__(self, name: str, fn: BatchFn, max_items: int, max_wait_s: float, max_jobs: int,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.name = name
        self.fn = fn
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.max_jobs = max_jobs
        self.on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def submit(self, key: Hashable, items: Sequence[Any]) -> Future:
        job = _Job(key, items)
        if not items:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            if len(self._jobs) >= self.max_jobs:
                raise Overloaded(f"{self.name} queue is full ({self.max_jobs} jobs waiting)")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    async def run(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """Await the results of ``items`` without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(key, items))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        for job in self._jobs:
            job.future.cancel()

    def _take(self) -> list[_Job] | None:
        """Wait for a first job, then for companions until the batch is full or the wait is over."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._jobs[0]
            deadline = first.queued_at + self.max_wait_s
            while (sum(len(j.items) for j in self._jobs if j.key == first.key) < self.max_items
                   and (remaining := deadline - time.monotonic()) > 0):
                self._cond.wait(remaining)
            taken, total = [], 0
            for job in list(self._jobs):
                if job.key != first.key:
                    continue
                if taken and total + len(job.items) > self.max_items:
                    break
                taken.append(job)
                total += len(job.items)
            for job in taken:
                self._jobs.remove(job)
            return taken

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            try:
                results = self.fn(jobs[0].key, items)
            except BaseException as exc:  # handed to the requests; the worker must live on
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(items), len(jobs))
            start = 0
            for job in jobs:
                job.future.set_result(list(results[start:start + len(job.items)]))
                start += len(job.items)


class Admission:
    """At most ``limit`` requests doing model work at once, and none expected to wait longer than ``max_wait_s``.

    A request's expected wait is the requests in progress times the recent model time per request: a finished
    request's time in its slot divided by how many requests shared the server with it (Little's law), over the
    last ``window`` requests. A refused request is not queued; nothing measured yet means no wait expected.
    """

    def __init__(self, limit: int, max_wait_s: float | None = None, window: int = 32) -> None:
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.active = 0
        self._costs: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def expected_wait(self) -> float:
        """Seconds a request admitted now would wait behind the ones in progress."""
        with self._lock:
            return self._expected_wait()

    def _expected_wait(self) -> float:
        return self.active * sum(self._costs) / len(self._costs) if self._costs else 0.0

    def _admit(self) -> int:
        with self._lock:
            if self.active >= self.limit:
                raise Overloaded(f"{self.active} requests in progress (limit {self.limit})")
            wait = self._expected_wait()
            if self.max_wait_s is not None and wait > self.max_wait_s:
                raise Overloaded(f"expected wait {wait:.1f} s behind {self.active} requests in progress is over "
                                 f"the budget of {self.max_wait_s:g} s", "queue_wait", wait)
            self.active += 1
            return self.active

    @contextmanager
    def slot(self) -> Iterator[None]:
        sharing = self._admit()
        started = time.monotonic()
        finished = False
        try:
            yield
            finished = True
        finally:
            seconds = time.monotonic() - started
            with self._lock:
                if finished:  # refusals and failures did no full model work: they would flatter the estimate
                    self._costs.append(seconds / max(sharing, self.active))
                self.active -= 1


class PixelBudget:
    """Decoded pixels of the requests in progress, bounded: what bounds the memory requests take together.

    A request over what is left is refused (503) at once, or with ``wait`` (the offline rebuild) waits for
    room; a single request larger than the whole budget is a caller's error (refused earlier by size).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int, wait: bool = False) -> AsyncIterator[None]:
        if pixels > self.limit:
            raise ValueError(f"{pixels} pixels can never fit the budget of {self.limit}")
        async with self._freed:
            if wait:
                await self._freed.wait_for(lambda: self.used + pixels <= self.limit)
            elif self.used + pixels > self.limit:
                raise Overloaded(f"{self.used} pixels are being decoded for other requests; this one needs "
                                 f"{pixels} more and the server's budget is {self.limit}", "pixels_in_flight")
            self.used += pixels
        try:
            yield
        finally:
            async with self._freed:
                self.used -= pixels
                self._freed.notify_all()
