"""The job queue: compute threads over bounded queues, smallest job first; identical
requests share one job, a job nobody waits for any more is dropped (queued) or stopped at its
next block (running)."""

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

QUEUE_MAX = 512  # jobs waiting or running; more gets HTTP 503


class Busy(RuntimeError):
    """The queue of work is full (HTTP 503)."""


class Cancelled(Exception):
    """Raised inside a running job when nobody waits for it any more."""


@dataclasses.dataclass(eq=False)
class Job:
    """One computation: `run(jobs)` computes a group of jobs with the same `group` (their
    results set on each job's future); smaller `priority` first."""

    key: str
    priority: float
    group: Any
    run: Callable[[list["Job"]], None]
    payload: Any
    size: int = 1
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    seq: int = 0
    waiters: int = 0  # requests waiting for it; a queued job nobody waits for is dropped


class Worker:
    """One compute thread over a bounded queue; identical keys in flight share one job."""

    def __init__(
        self, max_jobs: int = QUEUE_MAX, batch_max: int = 1, batch_wait: float = 0.01, name=""
    ):
        self.max_jobs, self.batch_max, self.batch_wait = max_jobs, batch_max, batch_wait
        self.pending: list[Job] = []
        self.inflight: dict[str, Job] = {}
        self.cond = threading.Condition()
        self.seq = 0
        self.computed = 0  # jobs computed (not shared, not cached): tests count them
        self.dropped = 0  # queued jobs dropped because every request for them went away
        self.cancelled = 0  # running jobs stopped because every request for them went away
        self.stopped = False
        self.running: list[Job] = []  # the group being computed
        self.thread = threading.Thread(target=self._loop, name=f"explore-worker{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        """Queues `job`, or returns the identical job already in flight; either way one
        more request waits for the returned job (`release` when it stops waiting)."""
        with self.cond:
            same = self.inflight.get(job.key)
            if same is not None:
                same.waiters += 1
                return same
            if len(self.inflight) >= self.max_jobs:
                raise Busy(f"{len(self.inflight)} computations queued; retry shortly")
            self.seq += 1
            job.seq, job.waiters = self.seq, 1
            self.inflight[job.key] = job
            self.pending.append(job)
            self.cond.notify()
        job.future.add_done_callback(lambda _, job=job: self._done(job))
        return job

    def _done(self, job: Job) -> None:
        """A job's result is set (or it failed or was dropped): no longer in flight."""
        with self.cond:
            if self.inflight.get(job.key) is job:
                del self.inflight[job.key]

    def release(self, job: Job) -> None:
        """One request stopped waiting (its client went away, e.g. a tile scrolled out of
        view): a job still queued that nobody waits for is dropped."""
        with self.cond:
            job.waiters -= 1
            if job.waiters <= 0 and job in self.pending:
                self.pending.remove(job)
                self.inflight.pop(job.key, None)
                self.dropped += 1
                job.future.cancel()

    @staticmethod
    def check_wanted(jobs: list[Job]) -> None:
        """Between two blocks of a running group: `Cancelled` when no request waits for any
        job of it any more (a tile scrolled out of view, a client that went away)."""
        if all(j.waiters <= 0 for j in jobs):
            raise Cancelled

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the thread: queued jobs are cancelled, a running one at its next block."""
        with self.cond:
            self.stopped = True
            for j in self.running:
                j.waiters = 0
            for j in self.pending:
                j.future.cancel()
            self.pending.clear()
            self.cond.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.pending and not self.stopped:
                self.cond.wait()
            if len(self.pending) == 1 and self.pending[0].group is not None:
                # The other tiles of a screen arrive within milliseconds: wait for them,
                # so they run as one batch.
                deadline = time.monotonic() + self.batch_wait
                while (left := deadline - time.monotonic()) > 0 and not self.stopped:
                    self.cond.wait(left)
            if self.stopped:
                return None
            first = min(self.pending, key=lambda j: (j.priority, j.seq))
            group = [first]
            if first.group is not None:
                total = first.size
                for j in sorted(self.pending, key=lambda j: j.seq):
                    if j is not first and j.group == first.group:
                        if total + j.size > self.batch_max:
                            break
                        group.append(j)
                        total += j.size
            for j in group:
                self.pending.remove(j)
            self.computed += len(group)
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            self.running = group
            try:
                group[0].run(group)
            except Cancelled:
                with self.cond:
                    self.cancelled += 1
                for j in group:
                    j.future.cancel()
            except Exception as e:  # the server keeps serving; the requests get a 500
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(e)
            finally:
                self.running = []
