"""What a new user hits, end to end (issue 16), on a mini clone (Snakefile, profiles/, report/ and a
tiny config.yaml in a temporary folder) driven by the repository's own `profiles/local`, so the
README's commands run there as written: wrong-run inputs refused, config edits rerun (naming the
key), byte-identical files rerun nothing, a corrupt input keeps the good files, iterations from
the command line, the report, a request past the last iteration, `opgrpo status`; round two (issue
25): a refused input stays refused on every rerun, the report regenerates a deleted input, config
edits rerun only what depends on the key, start-up errors for typos and missing paths, the docs'
commands."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
ITERS = 4  # the README's examples name iteration 3


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _sh(wd, cmd, check=True):
    """A command line exactly as the README writes it, in the mini clone, with this Python first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OPGRPO_PROGRESS": "0"}
    res = subprocess.run(cmd, shell=True, cwd=wd, capture_output=True, text=True, timeout=900, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def _planned(wd, *args) -> dict:
    """Dry run with the local profile: {rule: count} of the jobs Snakemake would run (empty: nothing)."""
    res = _sh(wd, "snakemake --profile profiles/local -n --quiet rules " + " ".join(args))
    counts = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def _mini_clone(wd: Path, cfg: dict) -> Path:
    for d in ("profiles", "report"):
        shutil.copytree(REPO / d, wd / d)
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    # prompts.train: > 1 MB, more than Snakemake's default checksum limit (the main job's files are)
    cfg = tiny_config(train={"iterations": ITERS}, eval={"every": 2}, prompts={"train": {"n": 8000}},
                      experiments={"main": ["flowgrpo"]})
    wd = _mini_clone(tmp_path_factory.mktemp("clone"), cfg)
    _sh(wd, "snakemake --profile profiles/local")
    return wd


def test_readme_rerun_commands_run_as_written(clone):
    block = (REPO / "README.md").read_text().split("## Rerunning one stage of one iteration")[1]
    cmds = [ln.split("#")[0].strip() for ln in block.split("```bash")[1].split("```")[0].strip().splitlines()]
    assert len(cmds) >= 4
    target = clone / "runs/flowgrpo/iter_00003/rewards.parquet"
    before = _sha(target)
    for cmd in cmds:
        res = _sh(clone, cmd)
        if "--help" in cmd:
            assert "--out-policy" in res.stdout, res.stdout
    assert _sha(target) == before and _sha("/tmp/rewards.parquet") == before
    assert _planned(clone) == {}  # regenerating byte-identical files left nothing to redo


def test_report_command_as_written_opens_on_the_results(clone):
    readme = (REPO / "README.md").read_text()
    cmd = re.search(r"`(snakemake [^`]*--report report\.html[^`]*)`", readme).group(1)
    _sh(clone, cmd)
    html = (clone / "report.html").read_text()
    # a non-empty metadata mapping makes the report open on the workflow description, which holds
    # the results tables (report/workflow.rst), instead of the job graph
    assert 'metadata = {"project"' in html
    desc = json.loads(re.search(r"workflow_desc\s*=\s*(\".*?\");?\n", html).group(1))
    assert "Table 1" in desc and "<table" in desc and "flowgrpo" in desc and "GenEval" in desc, desc[:2000]


def test_byte_identical_restore_and_force_rerun_nothing(clone):
    prompts = clone / "runs/prompts/train.jsonl"
    assert prompts.stat().st_size > 1_000_000
    shutil.copy(prompts, clone / "p.bak")
    os.utime(prompts, None)
    shutil.copy(clone / "p.bak", prompts)  # `cp` back: same bytes, new mtime
    assert _planned(clone) == {}
    _sh(clone, "snakemake --profile profiles/local -f runs/flowgrpo/iter_00001/policy.safetensors")
    assert _planned(clone) == {}


def _edit(clone, change) -> None:
    cfg = yaml.safe_load((clone / "config.yaml").read_text())
    change(cfg)
    (clone / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_config_edit_reruns_and_shows_the_change(clone):
    original = (clone / "config.yaml").read_text()
    try:
        _edit(clone, lambda c: c["train"].update(lr=3e-4))
        res = _sh(clone, "snakemake --profile profiles/local -n")
        # the reason names the key, old -> new (not the section's JSON twice)
        assert "Params have changed since last execution: train.lr: 0.0001 -> 0.0003" in res.stdout, res.stdout[-3000:]
        assert '"lr"' not in res.stdout, res.stdout[-3000:]
        planned = _planned(clone)
        assert planned.get("policy_update") == ITERS and planned.get("init_policy") == 1, planned
        # the base model is not trained: its evaluations (25 min each at SD3.5 scale) do not rerun
        assert "evaluate_base" not in planned and "final_eval_base" not in planned, planned
        (clone / "config.yaml").write_text(original)
        _edit(clone, lambda c: c["eval"].update(samples_per_prompt=3))  # re-evaluates, retrains nothing
        planned = _planned(clone)
        assert planned.get("evaluate") and "policy_update" not in planned and "rollout" not in planned, planned
        (clone / "config.yaml").write_text(original)
        _edit(clone, lambda c: c.setdefault("report", {}).update(grid_prompts=6))  # README: reruns the report only
        assert _planned(clone) == {"report": 1, "all": 1}
        res = _sh(clone, "snakemake --profile profiles/local -n")
        assert "report.grid_prompts: 12 -> 6" in res.stdout, res.stdout[-3000:]
    finally:
        (clone / "config.yaml").write_text(original)
    assert _planned(clone) == {}


def test_report_regenerates_a_file_it_reads(clone):
    """The report reads every iteration's rewards and samples: when it runs with one deleted (as
    the refusal message advises), that one is regenerated first, byte for byte, instead of the
    report failing on "missing rewards table" at the end of the run."""
    rewards = clone / "runs/flowgrpo/iter_00001/rewards.parquet"
    before = _sha(rewards)
    rewards.unlink()
    planned = _planned(clone, "-f results/main/tables/results.csv")  # and what follows score 1 (same bytes)
    assert planned.get("score") and planned.get("report") == 1, planned
    _sh(clone, "snakemake --profile profiles/local -f results/main/tables/results.csv")
    assert _sha(rewards) == before
    assert _planned(clone) == {}


def test_refused_input_stays_refused(clone):
    """A rewards table of another iteration copied over iteration 1's is refused, and refused again
    by the same command run again (it was accepted on the second try before); putting the good file
    back leaves nothing to redo and nothing lost."""
    it = clone / "runs/flowgrpo/iter_00001"
    keep = {p: _sha(p) for p in [it / "policy.safetensors", it / "optimizer.safetensors", it / "update_metrics.parquet",
                                 clone / "results/main/tables/results.csv"]}
    good = (it / "rewards.parquet").read_bytes()
    shutil.copy(clone / "runs/flowgrpo/iter_00000/rewards.parquet", it / "rewards.parquet")
    msg = "iter_00001/rewards.parquet: header says iteration=0, expected 1"
    for attempt in range(2):
        res = _sh(clone, "snakemake --profile profiles/local", check=False)
        assert res.returncode != 0, f"attempt {attempt}: accepted\n{res.stdout[-2000:]}"
        assert msg in res.stdout + res.stderr, res.stdout[-2000:]
        assert {p: _sha(p) for p in keep} == keep
    res = _sh(clone, f"snakemake --profile profiles/local {it.relative_to(clone)}/policy.safetensors", check=False)
    assert res.returncode != 0 and msg in res.stdout + res.stderr  # whatever needs it
    (it / "rewards.parquet").write_bytes(good)  # the fix: the good file back
    assert _planned(clone) == {}
    assert {p: _sha(p) for p in keep} == keep


def test_start_up_errors_name_the_typo_or_the_missing_path(clone):
    def fails(cmd, line):
        res = _sh(clone, cmd, check=False)
        out = res.stdout + res.stderr
        assert res.returncode != 0 and line in out, out[-3000:]
        assert "KeyError" not in out and "Traceback (most recent call last)" not in out, out[-3000:]
        assert "Job stats" not in out  # before planning any job

    fails("snakemake --profile profiles/local -n runs/flowgpro/iter_00001/policy.safetensors",
          "target runs/flowgpro/...: no run 'flowgpro' (runs: flowgrpo)")
    fails("snakemake --profile profiles/local -n --config 'runs={opgpro: {replay: {fraction: 0.25}}}'",
          "--config: runs.opgpro is in no experiment")
    fails("snakemake --profile profiles/local -n --config 'model={backbone: sd3}'", "model.path is not set")
    fails("snakemake --profile profiles/local -n --config 'model={backbone: sd3, path: models/sd35}'",
          "model.path: models/sd35 is not a directory")
    fails("snakemake --profile profiles/local -n --config 'prompts={heldout: {source: file, path: p.jsonl}}' "
          "'output_root=fresh'", "prompts.heldout.path: 'p.jsonl' is not a file")


def test_iterations_from_the_command_line(clone):
    planned = _planned(clone, "--config 'train={iterations: 6}'")  # the way docs/config.md gives
    assert planned.get("rollout") == 2 and planned.get("policy_update") == 2, planned  # extends, redoes nothing
    res = _sh(clone, "snakemake --profile profiles/local -n --config 'train={iterations: 0}'", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback (most recent call last)" not in out
    assert "config.yaml + --config: key 'train.iterations': 0 is less than the minimum of 1" in out
    (clone / "overlay.yaml").write_text("train: {iteratons: 3}\n")
    res = _sh(clone, "snakemake --profile profiles/local -n --configfile overlay.yaml", check=False)
    assert res.returncode != 0
    assert re.search(r"overlay\.yaml: train: .*'iteratons'", res.stdout + res.stderr), res.stdout[-2000:]


def test_request_past_the_last_iteration_is_an_error(clone):
    res = _sh(clone, f"snakemake --profile profiles/local -n runs/flowgrpo/iter_{ITERS + 2:05d}/policy.safetensors",
              check=False)
    assert res.returncode != 0
    msg = f"iteration {ITERS + 2} of run 'flowgrpo' does not exist: train.iterations = {ITERS} (iterations 0..{ITERS - 1})"
    assert msg in res.stdout + res.stderr, res.stdout[-2000:]


def test_status_shows_the_current_iteration(clone):
    out = _sh(clone, "opgrpo status").stdout
    assert f"flowgrpo: {ITERS}/{ITERS} iterations finished (current: iteration {ITERS - 1}" in out


def test_artifacts_are_world_readable(clone):
    for f in ["runs/flowgrpo/iter_00000/trajectories.safetensors", "runs/flowgrpo/iter_00000/policy.safetensors",
              "runs/flowgrpo/iter_00000/samples.parquet"]:
        assert (clone / f).stat().st_mode & 0o777 == 0o666 & ~_umask(), f


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_wrong_run_file_is_refused_and_corrupt_input_keeps_good_files(clone):
    """Last: it damages the clone. A trajectories file of another iteration copied in, then a
    truncated rewards table: Snakemake stops naming the file, and every other file stays."""
    it = clone / "runs/flowgrpo/iter_00002"
    keep = {p: _sha(p) for p in [it / "policy.safetensors", it / "optimizer.safetensors", it / "update_metrics.parquet",
                                 clone / "runs/flowgrpo/iter_00003/trajectories.safetensors"]}
    good = (it / "trajectories.safetensors").read_bytes()
    shutil.copy(clone / "runs/flowgrpo/iter_00001/trajectories.safetensors", it / "trajectories.safetensors")
    res = _sh(clone, "snakemake --profile profiles/local", check=False)
    assert res.returncode != 0
    assert "iter_00002/trajectories.safetensors: header says iteration=1, expected 2" in res.stdout + res.stderr
    assert {p: _sha(p) for p in keep} == keep
    (it / "trajectories.safetensors").write_bytes(good)

    rewards = it / "rewards.parquet"
    rewards.write_bytes(rewards.read_bytes()[:200])
    res = _sh(clone, "snakemake --profile profiles/local", check=False)
    assert res.returncode != 0
    assert "iter_00002/rewards.parquet: not a readable Parquet file" in res.stdout + res.stderr
    assert "delete it and rerun" in res.stdout + res.stderr
    assert {p: _sha(p) for p in keep} == keep  # nothing downstream was deleted or changed
    rewards.unlink()
    _sh(clone, "snakemake --profile profiles/local")
    assert {p: _sha(p) for p in keep} == keep  # regenerated: the same bytes, nothing else redone


def test_docs_commands_with_config_files_and_targets():
    """`--configfile` takes several files: a target after it was read as a config file."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        text = re.sub(r"\s+", " ", doc.read_text())
        # `--configfile A.yaml B.yaml` reads both as config files; what follows the last one must not be a target
        for m in re.finditer(r"--configfile((?: [^\s`']+\.ya?ml)+) (?![^\s`']*\.ya?ml(?:[\s`']|$))([^\s`']+)", text):
            assert m.group(2).startswith("-") or m.group(2) in ("#",), f"{doc.name}: {m.group(0)}"


def test_docs_points_of_round_two():
    readme = (REPO / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "Recovering from a refused input" in readme
    presets = readme.split("## Real models")[1].split("##")[0]
    assert "includes the Slurm executor plugin" in presets  # the preset commands say where the plugin comes from
    # the plain install brings the profile's executor: no Snakemake usage dump for `--profile profiles/slurm`
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("snakemake-executor-plugin-slurm>=") for d in deps), deps
    arch = (REPO / "docs/architecture.md").read_text()
    for target in re.findall(r"`(\.\./[^`]+)`|\]\(([^)#]+)\)", arch):
        path = next(t for t in target if t)
        assert (REPO / "docs" / path).resolve().is_relative_to(REPO) and (REPO / "docs" / path).exists(), path
    # the opening names the README's current main-job numbers (whatever they are), and says the table is older
    opening = (REPO / "docs/results.md").read_text().split("\n|")[0]
    current = re.findall(r"^\| (?:flowgrpo|opgrpo), 40 iterations \| (0\.\d{3}) \|", readme, re.M)
    assert len(current) == 2 and all(v in opening for v in current) and "Superseded" in opening, (current, opening)
