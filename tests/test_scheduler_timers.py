"""Snakemake's scheduler keeps one pending re-evaluation timer (execution/snakemake_patches.py, "The
scheduler's timers"): without the patch every call starts a timer that wakes the scheduler, so each
finished job added a perpetual chain of wake-ups (221 live timers after 460 jobs of `speedup`)."""

import threading

import snakemake.api  # noqa: F401  (first: snakemake.dag alone is a circular import)
from snakemake.scheduling.job_scheduler import JobScheduler

from opgrpo_stages.execution import snakemake_patches as P


class _Scheduler:  # what _schedule_reevalutation touches of a JobScheduler
    def __init__(self):
        self._open_jobs = threading.Semaphore(0)


def _timers() -> set:
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()}


def _wakeups(sched):
    n = 0
    while sched._open_jobs.acquire(blocking=False):
        n += 1
    return n


def test_many_passes_leave_one_pending_reevaluation():
    P.one_reevaluation_at_a_time()
    sched, before = _Scheduler(), _timers()
    for _ in range(50):  # 50 scheduler passes inside one timespan
        JobScheduler._schedule_reevalutation(sched, 0.2)
    started = _timers() - before  # (a timer of another test ending meanwhile does not count)
    assert len(started) == 1
    for t in started:
        t.join(10)
    assert _wakeups(sched) == 1  # the one timer woke the scheduler once
    JobScheduler._schedule_reevalutation(sched, 0.01)  # the next pass schedules the next one
    assert sched._open_jobs.acquire(timeout=10)


def test_schedulers_do_not_share_their_pending_timer():
    P.one_reevaluation_at_a_time()
    a, b = _Scheduler(), _Scheduler()
    JobScheduler._schedule_reevalutation(a, 0.01)
    JobScheduler._schedule_reevalutation(b, 0.01)
    assert a._open_jobs.acquire(timeout=10) and b._open_jobs.acquire(timeout=10)


def test_installed_with_the_other_patches_and_verified():
    P.install()
    assert JobScheduler._opgrpo_one_reevaluation
    P.verify()  # the patched method still passes the start-up check
