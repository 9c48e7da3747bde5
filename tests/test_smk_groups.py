"""The linear group check (opgrpo_stages/execution/snakemake_patches.py) finds exactly the groups Snakemake's own
quadratic check refuses: a group that depends on itself through a job outside it."""

from types import SimpleNamespace

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from opgrpo_stages.execution.snakemake_patches import check_groups


class _Group:  # hashable by identity, as Snakemake's GroupJob
    def __init__(self, groupid):
        self.groupid = groupid


def _dag(deps: dict, groups: dict):
    """deps: job -> jobs it depends on; groups: job -> group id."""
    objs = {gid: _Group(gid) for gid in set(groups.values())}
    return SimpleNamespace(_dependencies={j: dict.fromkeys(d) for j, d in deps.items()},
                           _group={j: objs[g] for j, g in groups.items()})


def test_chain_of_iteration_groups_passes():
    # rollout_k -> policy_{k-1}; policy_k -> rollout_k; evaluate_k (ungrouped) -> policy_k
    deps, groups = {}, {}
    for k in range(200):
        deps[f"roll{k}"] = [f"pol{k - 1}"] if k else []
        deps[f"pol{k}"] = [f"roll{k}"] + ([f"pol{k - 1}"] if k else [])
        deps[f"eval{k}"] = [f"pol{k}"]
        groups[f"roll{k}"] = groups[f"pol{k}"] = f"it{k // 3}"
    deps["final"] = [f"eval{k}" for k in range(200)]
    check_groups(_dag(deps, groups))


def test_group_leaving_and_reentering_is_refused():
    # a -> x -> b with a, b in group g and x outside: g depends on itself through x
    deps = {"a": ["x"], "x": ["b"], "b": []}
    with pytest.raises(WorkflowError, match="Error in group g: it depends on itself through jobs outside it"):
        check_groups(_dag(deps, {"a": "g", "b": "g"}))
    check_groups(_dag(deps, {"a": "g", "x": "g", "b": "g"}))  # x inside: fine
