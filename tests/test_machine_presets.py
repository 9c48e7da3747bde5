"""Overlays for the machines people have (presets/machines/*.yaml, issue 22): each one's stated figures
(comment line ``# expected: ...`` and its row in docs/config.md "Presets for your machine") are the
ones execution/cluster.py and the preflight derive from it; the GPU memory per rank fits an 80 GB GPU;
and `opgrpo preflight` passes on the GenEval preset + overlay with stand-in weights and a stand-in
GenEval server, while without the weights its only blocker is ``model.path`` (what a stand-in provides)."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from test_preflight import _preflight, _site_sinfo, standins  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "sd35_geneval.yaml"
MACHINES = {"1gpu.yaml": 1, "8gpu.yaml": 8, "4x8gpu.yaml": 32}  # overlay -> ranks
DOC = (REPO / "docs" / "config.md").read_text()


def _config(*overlays, preset=PRESET):
    from opgrpo_stages import config as C

    cfg = C.load(preset)
    for o in overlays:
        C.load(o)  # valid alone (as Snakemake and the preflight check an overlay)
        cfg = C.deep_merge(cfg, yaml.safe_load(Path(o).read_text()))
    C.validate(cfg, "preset + overlay")
    C.expand_seed_runs(cfg)
    return {r: C.resolve_run(copy.deepcopy(cfg), r) for r in cfg["runs"]}


def _figures(cfg):
    from opgrpo_stages.execution import cluster, training_job
    from opgrpo_stages.preflight import gpu_mem_gib

    it = cluster.iteration_seconds(cfg)
    n = cfg["train"]["prompts_per_iteration"] * cfg["train"]["group_size"]
    return {"ranks": cfg["distributed"]["nodes"] * cfg["distributed"]["processes"], "samples": n,
            "per_step": n // cfg["train"]["minibatches"], "minutes": round(it / 60),
            "job_iterations": cfg["cluster"]["iterations_per_job"],
            "job_hours": round(cfg["cluster"]["iterations_per_job"] * it / 3600, 1),
            "gpu_gib": round(gpu_mem_gib(cfg)), "host_gb": round(training_job(cfg)["mem_mb"] / 1024)}


def _doc_row(overlay: str) -> dict:
    row = next(ln for ln in DOC.splitlines() if ln.startswith("|") and f"| {overlay} |" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    nums = lambda c: [float(x) for x in re.findall(r"\d+(?:\.\d+)?", c)]  # noqa: E731
    (samples, per_step), (minutes,), (job_it, job_h) = nums(cells[3]), nums(cells[4]), nums(cells[5])
    return {"ranks": int(cells[2]), "samples": samples, "per_step": per_step, "minutes": minutes,
            "job_iterations": job_it, "job_hours": job_h, "gpu_gib": nums(cells[6])[0], "host_gb": nums(cells[7])[0]}


@pytest.mark.parametrize("overlay", [*MACHINES, None], ids=lambda o: o or "preset-alone")
def test_stated_figures_are_the_derived_ones(overlay):
    path = REPO / "presets" / "machines" / overlay if overlay else None
    runs = _config(path) if path else _config()
    figs = [_figures(cfg) for cfg in runs.values()]
    assert all(f == figs[0] for f in figs)  # flowgrpo and opgrpo cost the same
    f = figs[0]
    assert _doc_row(f"`machines/{overlay}`" if overlay else "(none)") == f
    if overlay:
        assert f["ranks"] == MACHINES[overlay]
        line = next(ln for ln in path.read_text().splitlines() if ln.startswith("# expected:"))
        assert (f"~{f['minutes']} min per iteration, ~{f['gpu_gib']} GiB GPU per rank, ~{f['host_gb']} GB host "
                f"per node, {f['samples']} samples per iteration") in line, line
    assert f["gpu_gib"] <= 80 * 0.95  # fits an 80 GB GPU with the preflight's margin
    # the paper's batch is kept wherever the overlay does not say it changes the algorithm
    changed = overlay is not None and "changes the algorithm" in path.read_text()
    assert (f["samples"], f["per_step"]) == ((288, 144) if changed else (1152, 576))


@pytest.mark.parametrize("preset", ["sd35_ocr.yaml", "sd35_pickscore.yaml"])
@pytest.mark.parametrize("overlay", MACHINES)
def test_overlays_fit_the_other_sd35_presets(preset, overlay):
    from opgrpo_stages.preflight import gpu_mem_gib

    for cfg in _config(REPO / "presets" / "machines" / overlay, preset=REPO / "presets" / preset).values():
        assert gpu_mem_gib(cfg) <= 80 * 0.95 and cfg["distributed"]["nodes"] * cfg["distributed"]["processes"] == MACHINES[overlay]


def test_without_weights_the_only_blocker_is_model_path(standins, monkeypatch):  # noqa: F811
    import os

    from opgrpo_stages.preflight import checks

    wd, _, url = standins
    # the stand-in site's sinfo ahead of any real one (this machine's test cluster knows no 'gpu')
    monkeypatch.setenv("PATH", f"{_site_sinfo(wd / 'bin')}{os.pathsep}{os.environ['PATH']}")
    for overlay in MACHINES:
        config = _merged(yaml.safe_load(PRESET.read_text()), overlay, {"reward": {"options": {"geneval": {"server": {"url": url}}}}})
        rows = checks(config, {"default-resources": {"slurm_partition": "gpu", "slurm_account": "me"}},
                      gpu_mem_gb=80, node_mem_gb=512, time_limit=2880)
        blockers = [r for r in rows if r.status == "BLOCKER"]
        assert blockers and {r.key for r in blockers} == {"model.path"}, (overlay, blockers)
        gpu = [r for r in rows if r.check == "GPU memory"]
        assert gpu and all(r.status == "ok" for r in gpu), gpu


def _merged(config, overlay, extra):
    from opgrpo_stages import config as C

    config = C.deep_merge(config, yaml.safe_load((REPO / "presets" / "machines" / overlay).read_text()))
    config = C.deep_merge(config, extra)
    C.validate(config, "preset + overlay")
    C.expand_seed_runs(config)
    return config


@pytest.mark.parametrize("overlay", MACHINES)
def test_preflight_passes_with_standin_weights_and_server(standins, overlay):  # noqa: F811
    wd, sd3, url = standins
    (wd / "standin.yaml").write_text(yaml.safe_dump(
        {"model": {"path": str(sd3)}, "reward": {"options": {"geneval": {"server": {"url": url}}}}}))
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    prof["default-resources"].update(slurm_partition="gpu", slurm_account="me")
    (wd / "profile.yaml").write_text(yaml.safe_dump(prof))
    res = _preflight("--configfile", str(PRESET), "--configfile", str(REPO / "presets" / "machines" / overlay),
                     "--configfile", str(wd / "standin.yaml"), "--profile", str(wd / "profile.yaml"),
                     "--node-mem-gb", "512", path_first=_site_sinfo(wd / "bin"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BLOCKER" not in res.stdout and "answers as geneval" in res.stdout
