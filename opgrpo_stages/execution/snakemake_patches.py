"""Every change this package makes to Snakemake's internals, in one place (installed by the Snakefile
through :func:`opgrpo_stages.execution.install_snakemake_patches`).

1. Stages of a cluster job as threads of its one process (:func:`run_group_stages_in_threads`).
2. A linear-time check of Snakemake's job groups, for long runs (:func:`install`).

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
    """Use :func:`check_groups` for Snakemake's two quadratic group checks."""
    from snakemake.dag import DAG

    if getattr(DAG, "_opgrpo_linear_groups", False):
        return
    if not (hasattr(DAG, "_check_groups") and hasattr(DAG, "validate_group")):
        return  # another Snakemake: keep its own checks
    DAG._check_groups = check_groups
    DAG.validate_group = lambda self, group: None  # covered by check_groups, over all groups at once
    DAG._opgrpo_linear_groups = True


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
