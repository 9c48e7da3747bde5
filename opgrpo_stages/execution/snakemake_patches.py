"""Every change this package makes to Snakemake's internals, in one place (installed by the Snakefile
through :func:`opgrpo_stages.execution.install_snakemake_patches`).

1. Stages of a cluster job as threads of its one process (:func:`run_group_stages_in_threads`).
2. A linear-time check of Snakemake's job groups, for long runs (:func:`install`).
3. A refused input stays refused (:func:`keep_restored_mtimes`, from :func:`install`).
4. Config edits: which params changes rerun a job, and a reason naming the keys
   (:func:`params_changes_by_key`, from :func:`install`).
5. One pending re-evaluation of the scheduler at a time (:func:`one_reevaluation_at_a_time`, from
   :func:`install`).

Both reach into Snakemake's internals, so the versions are pinned to the window they were checked
against (``TESTED``, also in pyproject.toml) and :func:`verify` asserts at every start-up, local
runs and CI included, that each patch finds what it patches: a newer Snakemake fails there with
one line naming the versions, not at parse of every cluster job, and never silently (a local
executor that stopped reading ``use_threads`` would turn every stage back into a process).

The scheduler's timers: with a job rate limit (Snakemake's default ``--max-jobs-per-timespan
100/1s``) every pass of ``JobScheduler.schedule`` ends by starting a ``threading.Timer`` that wakes
the scheduler again one timespan later, and every wake-up is a pass. A finished job wakes it too,
so each finished job starts one more timer chain that never ends: after N jobs about N passes a
second, each walking the open jobs in the main thread while holding the GIL. Measured in the
`speedup` experiment (2,182 jobs, stages as threads): 221 live timers after 460 jobs (8,378 thread ids
seen in 100 samples of /proc: thousands of short-lived threads), the main thread at 75-100% of a core, and policy_update slowing from 3.0 s
to 7.4 s per job over the first 14 minutes. One pending timer is enough (a pass re-evaluates every
job), so :func:`one_reevaluation_at_a_time` starts a new one only when none is pending.

The group check:

Snakemake (9.x) checks that no group depends on itself through jobs outside it by a depth-first
search from every grouped job through all of its ancestors (``DAG._check_groups``, and a
breadth-first one per dependency in ``DAG.validate_group``): quadratic in the number of jobs.
Every iteration is a group here (``cluster.iterations_per_job``), so a 1,000-iteration preset
(~11,000 jobs) spent most of its minutes-long DAG build there. The same condition is a cycle in
the graph whose nodes are the groups (and the ungrouped jobs): one depth-first search, O(jobs +
dependencies). ``install()`` swaps it in; the error still names the group.
"""

from __future__ import annotations

# package -> (lowest tested, first untested): pyproject.toml pins the same window
TESTED = {"snakemake": ((9, 20), (9, 28)), "snakemake-executor-plugin-slurm": ((2, 8), (2, 9))}
ALLOW_UNTESTED = "OPGRPO_ALLOW_UNTESTED_SNAKEMAKE"  # =1: try another version (the patches are still verified)


class PatchError(RuntimeError):
    """Snakemake's internals are not what the patches expect."""


def _version_tuple(v: str) -> tuple:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def installed_versions() -> dict:
    """package -> installed version string (None: not installed), for the packages in ``TESTED``."""
    from importlib import metadata

    out = {}
    for pkg in TESTED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _window() -> str:
    return ", ".join(f"{p} >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}" for p, (lo, hi) in TESTED.items())


def verify(versions: dict | None = None) -> None:
    """Raise :class:`PatchError` (one line) when an installed Snakemake or Slurm plugin is outside the
    tested window (unless ``OPGRPO_ALLOW_UNTESTED_SNAKEMAKE=1``) or when a patched internal is gone."""
    import inspect
    import os

    versions = installed_versions() if versions is None else versions
    found = ", ".join(f"{p} {v}" for p, v in versions.items() if v)
    if os.environ.get(ALLOW_UNTESTED) != "1":
        for pkg, v in versions.items():
            lo, hi = TESTED[pkg]
            if v is not None and not lo <= _version_tuple(v) < hi:
                raise PatchError(f"opgrpo patches Snakemake internals tested with {_window()}, but {found} is "
                                 f"installed: pip install -e '.[slurm]' (the pinned window), or set "
                                 f"{ALLOW_UNTESTED}=1 to try it")
    import snakemake.api  # noqa: F401  (imported first: snakemake.dag alone is a circular import)
    from snakemake.dag import DAG
    from snakemake.executors import local

    problems = []
    if not (hasattr(DAG, "_check_groups") and hasattr(DAG, "validate_group")):
        problems.append("DAG._check_groups / DAG.validate_group are gone (linear group check)")
    init = inspect.getsource(DAG.__init__)
    if "self._group" not in init or "self._dependencies" not in init:
        problems.append("DAG no longer keeps _group / _dependencies (linear group check)")
    if "__post_init__" not in vars(local.Executor):
        problems.append("snakemake.executors.local.Executor.__post_init__ is gone (stages as threads)")
    from snakemake.scheduling.job_scheduler import JobScheduler

    reevaluate = vars(JobScheduler).get("_schedule_reevalutation")
    if reevaluate is None or "threading.Timer" not in inspect.getsource(reevaluate):
        problems.append("JobScheduler._schedule_reevalutation is gone or starts no Timer (one re-evaluation)")
    if "self.use_threads" not in inspect.getsource(local.Executor.run_single_job):
        problems.append("the local executor's run_single_job no longer reads self.use_threads (stages as threads)")
    if problems:
        raise PatchError(f"opgrpo's Snakemake patches (opgrpo_stages/execution/snakemake_patches.py) do not fit "
                         f"{found} (tested: {_window()}): " + "; ".join(problems))


def check_groups(dag) -> None:
    """Raise WorkflowError if a group reaches itself again through jobs outside it."""
    from snakemake_interface_common.exceptions import WorkflowError

    group_of = dag._group

    def node(job):
        return group_of.get(job, job)

    succ: dict = {}
    for job, deps in dag._dependencies.items():
        a = node(job)
        out = succ.setdefault(a, set())
        for dep in deps:
            b = node(dep)
            if b is not a:
                out.add(b)
    WHITE, GREY, BLACK = 0, 1, 2
    colour: dict = {}
    for start in list(succ):
        if colour.get(start, WHITE) != WHITE:
            continue
        colour[start] = GREY
        stack = [(start, iter(succ.get(start, ())))]
        while stack:
            n, it = stack[-1]
            for m in it:
                c = colour.get(m, WHITE)
                if c == GREY:  # back edge: a cycle through m
                    groups = [x for x, _ in stack[[s for s, _ in stack].index(m):]
                              if getattr(x, "groupid", None) is not None]
                    gid = groups[0].groupid if groups else m
                    raise WorkflowError(f"Error in group {gid}: it depends on itself through jobs outside it "
                                        f"(put those jobs into the group as well)")
                if c == WHITE:
                    colour[m] = GREY
                    stack.append((m, iter(succ.get(m, ()))))
                    break
            else:
                colour[n] = BLACK
                stack.pop()


def install() -> None:
    """Patches 2-5: the linear group check, kept mtimes of restored outputs, params by key, one
    pending scheduler re-evaluation."""
    linear_group_checks()
    keep_restored_mtimes()
    params_changes_by_key()
    one_reevaluation_at_a_time()


def one_reevaluation_at_a_time() -> None:
    """``JobScheduler._schedule_reevalutation`` (sic) starts a timer only when none is pending
    (module doc, "The scheduler's timers"): the pending one wakes the scheduler no later than the new
    one would have, and that pass schedules the next."""
    import threading

    import snakemake.api  # noqa: F401  (first: snakemake.dag alone is a circular import)
    from snakemake.scheduling.job_scheduler import JobScheduler

    if getattr(JobScheduler, "_opgrpo_one_reevaluation", False):
        return
    if "_schedule_reevalutation" not in vars(JobScheduler):
        raise PatchError("snakemake JobScheduler has no _schedule_reevalutation to replace (see verify())")
    guard = threading.Lock()

    def _schedule_reevalutation(self, delay) -> None:
        with guard:
            if getattr(self, "_opgrpo_pending_timer", None) is not None:
                return

            def wake():
                with guard:
                    self._opgrpo_pending_timer = None
                self._open_jobs.release()

            self._opgrpo_pending_timer = timer = threading.Timer(delay, wake)
            timer.daemon = True  # never holds the process open at exit
        timer.start()

    JobScheduler._schedule_reevalutation = _schedule_reevalutation
    JobScheduler._opgrpo_one_reevaluation = True


def linear_group_checks() -> None:
    """Use :func:`check_groups` for Snakemake's two quadratic group checks."""
    from snakemake.dag import DAG

    if getattr(DAG, "_opgrpo_linear_groups", False):
        return
    if not (hasattr(DAG, "_check_groups") and hasattr(DAG, "validate_group")):
        raise PatchError("snakemake.dag.DAG has no _check_groups / validate_group to replace (see verify())")
    DAG._check_groups = check_groups
    DAG.validate_group = lambda self, group: None  # covered by check_groups, over all groups at once
    DAG._opgrpo_linear_groups = True


def keep_restored_mtimes() -> None:
    """Restore the ``update()`` outputs of a failed job whole: their bytes, modification times and
    Snakemake's record of what they were made from.

    A job whose stage refuses an input (a file of another run, a truncated table) fails, and
    Snakemake puts back the outputs it had from a backup. But it copied them without their times,
    and it records a failed job's outputs as made from the inputs of that failed try (the refused
    file's checksum). So the next run found them newer than the refused input, "made from it", and
    planned nothing: the refused file was accepted (and read by the report) on the second try.
    Restored whole, the tree is as before the run: the refused input is newer than the outputs
    and not the file they were made from, so every later run that needs them runs the job again
    and it refuses again, until the file is fixed (deleted and regenerated, or the good one put
    back). Nothing of the user's is lost: the outputs are the previous ones, byte for byte."""
    import shutil
    from pathlib import Path

    from snakemake.persistence import FileBackupMixin, PersistenceBase

    if getattr(FileBackupMixin, "_opgrpo_restores_whole", False):
        return
    needs = {FileBackupMixin: ("_get_backup_path", "backup_output", "restore_output"),
             PersistenceBase: ("finished", "_read_record", "_write_record", "_delete_record")}
    if not all(hasattr(cls, f) for cls, fs in needs.items() for f in fs):
        return  # another Snakemake: keep its own
    backup, restore, finished = FileBackupMixin.backup_output, FileBackupMixin.restore_output, PersistenceBase.finished

    def record(self, path):
        if hasattr(self, "_clear_cache"):
            self._clear_cache()
        return self._read_record(str(path))

    def backup_output(self, path: Path) -> None:
        self.__dict__.setdefault("_opgrpo_records", {})[str(path)] = record(self, path)
        if path.is_dir():
            return backup(self, path)  # copytree keeps the times already
        target = self._get_backup_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

    def restore_output(self, path: Path) -> bool:
        source = self._get_backup_path(path)
        if source.is_file():
            shutil.copy2(source, path)
            source.unlink()
            done = True
        else:
            done = restore(self, path)
        if done:  # finished() below puts back its record of what the output was made from
            self.__dict__.setdefault("_opgrpo_restored", set()).add(str(path))
        return done

    async def finished_keeping_restored(self, job) -> None:
        await finished(self, job)  # Snakemake calls it for failed jobs too
        restored = self.__dict__.get("_opgrpo_restored", set())
        records = self.__dict__.get("_opgrpo_records", {})
        for f in job.output:
            key = str(f)
            if key not in restored:
                continue
            restored.discard(key)
            old = records.pop(key, None)
            if hasattr(self, "_clear_cache"):
                self._clear_cache()
            if old is None:
                self._delete_record(key)
            else:
                self._write_record(key, old)

    FileBackupMixin.backup_output = backup_output
    FileBackupMixin.restore_output = restore_output
    PersistenceBase.finished = finished_keeping_restored
    FileBackupMixin._opgrpo_restores_whole = True


def params_changes_by_key() -> None:
    """Snakemake's params trigger over the config keys a stage records (``config.rule_params``):
    compared key by key (``config.params_change``), so the dry run's reason reads
    ``train.lr: 0.0001 -> 0.0003`` instead of the whole section's JSON twice, and a section a
    stage no longer depends on (a code change) reruns nothing."""
    from snakemake.persistence import ParamsChange, PersistenceBase

    from .. import config as C

    if getattr(PersistenceBase, "_opgrpo_params_by_key", False):
        return
    if not all(hasattr(PersistenceBase, f) for f in ("params_changed", "params", "_params", "record_format_version")):
        return

    class KeyChange(ParamsChange):
        def __str__(self):
            return C.format_params_change(self.keys) if self else "No params change"

    def params_changed(self, job, file=None):
        new = self._params(job)
        keys, files = {}, set()
        for f in [file] if file is not None else job.output:
            version = self.record_format_version(f)
            recorded = self.params(f)
            if version is None or version < 6 or recorded is None:
                continue  # as Snakemake: no reliable params recorded
            change = C.params_change(recorded, new)
            if change:
                keys.update(change)
                files.add(f)
        out = KeyChange(only_old={f"{k}={a}" for k, (a, b) in keys.items()},
                        only_new={f"{k}={b}" for k, (a, b) in keys.items()}, files=files)
        out.keys = dict(sorted(keys.items()))
        return out

    PersistenceBase.params_changed = params_changed
    PersistenceBase._opgrpo_params_by_key = True


def run_group_stages_in_threads() -> None:
    """Make this Snakemake process's local executor run ``run:`` jobs as threads, as
    ``--force-use-threads`` does. Called by the Snakefile only inside a cluster job (remote exec
    mode), where the executor plugin interface (``RealExecutor.get_job_args``) leaves that flag off
    for group jobs and no profile is read. Snakemake >= 9.20 (the Snakefile's min_version): its
    local executor reads ``use_threads`` once, when it is created."""
    from snakemake.executors import local

    if getattr(local.Executor, "_opgrpo_threads", False):
        return
    created = local.Executor.__post_init__

    def __post_init__(self):
        created(self)
        self.use_threads = True

    local.Executor.__post_init__ = __post_init__
    local.Executor._opgrpo_threads = True
