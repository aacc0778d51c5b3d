"""Dynamic batching: texts from concurrent requests share one model call.

Requests queue their texts. One worker takes the first waiting request and
everything queued behind it, up to `max_batch` texts, and runs the model once
on all of them, in a single thread beside the event loop (the model is not
thread-safe, and the loop stays free to accept requests meanwhile). Each
request then gets its own slice of the results.

The model thread is also where the model is loaded (`model_thread`): torch's
CPU threads come from OpenMP, which gives every thread that runs torch ops a
pool of its own; once two threads have pools there are more OpenMP threads
than cores, libgomp stops spinning between parallel regions, and every op
pays a wake-up. Loaded in the main thread and run in this one, a forward
pass took 1.8x as long as in the main thread alone.

How long to wait for more: the texts of every client that was active during
the last batch are expected (the clients it answered send their next requests
a few milliseconds later, the others are already queued). A lone client
therefore never waits, and under steady load the batches stay full instead of
settling into halves that take turns, which on a CPU costs more per text:
packing has fewer texts to fill its rows with. The wait is bounded twice: by
`max_wait`, and by a tenth of the time the model took for the last batch, so
waiting costs at most a tenth of the model's time. On a CPU, where a batch of
32 takes seconds, 32 clients come back in 100-300 ms and the batch is
full; on a GPU, where it takes milliseconds, a batch hardly waits at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)


class Decision(NamedTuple):
    """How one batch was formed: the texts expected, the longest it could wait for them, and the texts it got."""

    expected: int
    wait_limit: float  # seconds: min(max_wait, wait_share x the last batch's model time)
    size: int


class BatchFailed(Exception):
    """The model failed on a request's texts (alone, after its batch failed); the server's log says why."""


def model_thread() -> ThreadPoolExecutor:
    """The one thread that loads the model and runs every batch (see above)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


class Batcher:
    def __init__(
        self,
        run: Callable[[list[str]], list],
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int], None] = lambda size: None,
        executor: ThreadPoolExecutor | None = None,
        wait_share: float = 0.1,
    ):
        self.run, self.max_batch, self.max_wait, self.on_batch = run, max_batch, max_wait, on_batch
        self.wait_share = wait_share  # of the last batch's model time, the most a batch waits
        self.last_run = 0.0  # seconds the model took for the last batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = executor or model_thread()
        self.worker: asyncio.Task | None = None
        self.queued_texts = 0
        self.expected = 1  # texts active during the last batch (its own and those queued meanwhile)
        self.decisions: deque[Decision] = deque(maxlen=64)  # the latest batches' decisions, oldest first

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """After the server has answered every accepted request: end the worker and the model thread."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> list:
        """The results for these texts, computed in a batch with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        await self.queue.put((texts, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            size = len(waiting[0][0])
            expected = min(self.max_batch, self.expected)
            wait_limit = min(self.max_wait, self.wait_share * self.last_run)
            deadline = loop.time() + wait_limit
            while size < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if size >= expected or left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                waiting.append(item)
                size += len(item[0])
            self.queued_texts -= size
            self.decisions.append(Decision(expected, wait_limit, size))
            waiting = [(texts, future) for texts, future in waiting if not future.done()]  # callers that gave up
            if waiting:
                await self._run_batch(loop, waiting)
            self.expected = size + self.queued_texts

    async def _run_batch(self, loop, waiting: list) -> None:
        texts = [text for request, _ in waiting for text in request]
        started = loop.time()
        try:
            results = await loop.run_in_executor(self.executor, self._run_chunks, texts)
        except Exception:  # noqa: BLE001 - one request's text may be what failed: the others must not pay for it
            log.exception("classifying a batch of %d texts from %d requests failed", len(texts), len(waiting))
            if len(waiting) > 1:
                for alone in waiting:
                    await self._run_batch(loop, [alone])
            elif not waiting[0][1].done():
                waiting[0][1].set_exception(BatchFailed())
            return
        finally:
            self.last_run = loop.time() - started
        start = 0
        for request, future in waiting:
            if not future.done():
                future.set_result(results[start : start + len(request)])
            start += len(request)

    def _run_chunks(self, texts: list[str]) -> list:
        """The model on at most max_batch texts a call, however many texts one request brought."""
        results = []
        for start in range(0, len(texts), self.max_batch):
            chunk = texts[start : start + self.max_batch]
            self.on_batch(len(chunk))
            results += self.run(chunk)
        return results
