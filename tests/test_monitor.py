"""Watching a run (issue 26): TensorBoard event files read back with TensorBoard's own reader after a
2-iteration pipeline run, each scalar equal to its value in the Parquet tables; a rerun iteration
replaces its points (no duplicate step) and the rule rewrites nothing but event files; `opgrpo status`
lists only the target's runs with their fields and honours --config; the wandb feed (a fake wandb
module: wandb is not a dependency) and its errors."""

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import snakemake_in, tiny_config

REPO = Path(__file__).resolve().parents[1]
RUNS = ["flowgrpo", "opgrpo"]
ITERS = 2


def _status(wd, *args):
    res = subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", "status", *args], cwd=wd, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    return res


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    wd = tmp_path_factory.mktemp("monitor")
    # seeds: the config defines flowgrpo-seed7 and opgrpo-seed7, which the default target does not train
    cfg = tiny_config(runs={"flowgrpo": {}, "opgrpo": {"replay": {"fraction": 0.5, "truncation": 2}}}, seeds=[7])
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake_in(wd)
    return wd


def _acc(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _f32(v):
    return float(np.float32(v))


def _expected_train(wd, run, k):
    """Every training scalar of iteration k, computed here from the Parquet tables and benchmark files."""
    it = wd / "runs" / run / f"iter_{k:05d}"
    smp, rew = pd.read_parquet(it / "samples.parquet"), pd.read_parquet(it / "rewards.parquet")
    met = pd.read_parquet(it / "update_metrics.parquet").iloc[0]
    buf = pd.read_parquet(it / "buffer.parquet") if k < ITERS - 1 else None  # the last buffer is never written
    r, src = rew["reward"].to_numpy(), smp["source"].to_numpy()
    exp = {"reward/all": r.mean(), "reward/fresh": r[src == "fresh"].mean()}
    if (src == "replay").any():
        exp["reward/replayed"] = r[src == "replay"].mean()
    replay_groups = set(smp.loc[src == "replay", "group"])
    exp["reward/dataset_drawn"] = r[~smp["group"].isin(replay_groups).to_numpy()].mean()
    exp["reward/strict_accuracy"] = rew["geneval_strict"].mean()
    for term in ("geneval", "brightness"):
        exp[f"reward_terms/{term}"] = rew[term].mean()
    weights = ("weight_mean", "weight_std", "weight_min", "weight_max", "weight_ess", "weight_capped")
    for col, v in met.items():
        if col in ("iteration", "reward_mean", "reward_std") or col.startswith(("logp_", "train_")):
            continue
        if col in weights and met["n_replay"] == 0:
            continue
        if np.isfinite(v):
            exp[(f"replay/{col}" if col in weights + ("n_replay",) else f"update/{col}")] = v
    if buf is not None:
        exp["replay/buffer_size"] = len(buf)
        if len(buf):
            exp["replay/buffer_mean_reward"] = buf["reward"].mean()
    tied = [len(set(r[smp["group"] == g])) == 1 for g in sorted(set(smp["group"]))]
    tied_fresh = [len(set(r[(smp["group"] == g) & (src == "fresh")])) <= 1 for g in sorted(set(smp["group"]))]
    exp["groups/degenerate_share"], exp["groups/degenerate_share_fresh"] = np.mean(tied), np.mean(tied_fresh)
    for stage in ("rollout", "score", "policy_update"):
        bench = pd.read_csv(wd / "logs" / run / f"iter_{k:05d}" / f"{stage}.benchmark.tsv", sep="\t")
        exp[f"seconds/{stage}"] = bench["s"].iloc[-1]
    return exp


def _expected_heldout(table):
    df = pd.read_parquet(table)
    by_tag = df.groupby("tag")["correct"].mean()
    exp = {f"heldout/geneval_{t}": v for t, v in by_tag.items()}
    exp["heldout/geneval_overall"] = by_tag.mean()
    exp["heldout/reward"] = df["reward"].mean()
    return exp


def test_event_files_hold_the_parquet_values(pipe):
    from PIL import Image

    for run in RUNS:
        acc = _acc(pipe / "runs" / run)
        expected = {}  # tag -> {step: value}
        for k in range(ITERS):
            for tag, v in _expected_train(pipe, run, k).items():
                expected.setdefault(tag, {})[k + 1] = _f32(v)
            for tag, v in _expected_heldout(pipe / "runs" / run / "eval" / f"iter_{k:05d}.parquet").items():
                expected.setdefault(tag, {})[k + 1] = _f32(v)
        assert set(acc.Tags()["scalars"]) == set(expected), run  # every logged scalar is checked here
        for tag, points in expected.items():
            assert {e.step: e.value for e in acc.Scalars(tag)} == points, (run, tag)
        grid = Image.open(pipe / "runs" / run / "eval" / "iter_00001.png")
        imgs = acc.Images("heldout/samples")
        assert [e.step for e in imgs] == [1, 2] and (imgs[-1].width, imgs[-1].height) == grid.size
    assert {"replay/weight_std", "reward/replayed", "update/clipfrac_replay"} <= set(_acc(pipe / "runs/opgrpo").Tags()["scalars"])
    base = _acc(pipe / "runs" / "base")
    for tag, v in _expected_heldout(pipe / "runs/base/eval.parquet").items():
        assert [(e.step, e.value) for e in base.Scalars(tag)] == [(0, _f32(v))], tag


def _snapshot(wd):
    return {str(p.relative_to(wd)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in ("runs", "results") for p in (wd / d).rglob("*") if p.is_file()}


def test_rerun_of_one_iteration_leaves_no_duplicate_step(pipe):
    event = pipe / "runs/flowgrpo/events.out.tfevents.train_00001"
    before = event.stat().st_ino
    # rerun iteration 1's records (its stages rerun with -f reproduce the same bytes, which Snakemake's
    # checksums then treat as unchanged)
    res = snakemake_in(pipe, "-f", "runs/flowgrpo/events.out.tfevents.train_00001", "runs/flowgrpo/events.out.tfevents.heldout_00001")
    assert (res.stdout + res.stderr).count("localrule tensorboard:") == 2, res.stderr[-3000:]
    assert event.stat().st_ino != before  # replaced, not appended to
    acc = _acc(pipe / "runs/flowgrpo")
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
    assert sorted(p.name for p in (pipe / "runs/flowgrpo").glob("*tfevents*")) == [
        "events.out.tfevents.heldout_00000", "events.out.tfevents.heldout_00001",
        "events.out.tfevents.train_00000", "events.out.tfevents.train_00001"]


def test_the_rule_writes_only_event_files(pipe):
    before = _snapshot(pipe)
    events = [p for p in (pipe / "runs").rglob("*tfevents*")]
    for p in events:
        p.unlink()
    res = snakemake_in(pipe)
    assert "rule tensorboard" in res.stdout + res.stderr
    after = _snapshot(pipe)
    changed = {f for f in set(before) | set(after) if before.get(f) != after.get(f)}
    assert all("tfevents" in f for f in changed), sorted(changed)
    assert {str(p.relative_to(pipe)) for p in events} <= set(after)


def test_status_lists_the_targets_runs_with_their_fields(pipe):
    res = _status(pipe)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "seed7" not in out  # defined by `seeds`, not trained by the default target
    for run in RUNS:
        assert f"{run}: {ITERS}/{ITERS} iterations finished" in out
        smp = pd.read_parquet(pipe / f"runs/{run}/iter_00001/samples.parquet")
        rew = pd.read_parquet(pipe / f"runs/{run}/iter_00001/rewards.parquet")
        fresh = rew["reward"][smp["source"].to_numpy() == "fresh"].mean()
        assert f"training reward {fresh:.4f} (fresh samples, iteration 1)" in out
        ev = pd.read_parquet(pipe / f"runs/{run}/eval/iter_00001.parquet")
        assert f"reward {ev['reward'].mean():.4f} (after iteration 1)" in out
    assert out.count("/iteration (median of the last 1)") == 2 and out.count("; finished") == 2
    # --config overrides, as given to snakemake: the same runs, now 2 of 5 iterations, with an ETA
    longer = _status(pipe, "--config", "train={iterations: 5}").stdout
    assert "flowgrpo: 2/5 iterations finished" in longer and "ETA " in longer and "(3 iterations left)" in longer
    # a target: only its runs
    only = _status(pipe, "runs/opgrpo-seed7/iter_00000/rewards.parquet").stdout
    assert only.startswith("opgrpo-seed7: 0/2 iterations finished") and "flowgrpo" not in only
    bad = _status(pipe, "--run", "nosuch")
    assert bad.returncode == 2 and "--run 'nosuch': not a run of this config" in bad.stderr


class _FakeWandb(types.ModuleType):
    """Records what the feed sends; enough of wandb's API for monitor/wandb_feed.py."""

    def __init__(self, logged_in=True):
        super().__init__("wandb")
        self.inits, self.logs, self.logged_in = [], [], logged_in

    def login(self, prompt=True, verify=True):
        return self.logged_in

    def init(self, **kw):
        self.inits.append(kw)
        fake = self

        class Run:
            def define_metric(self, *a, **k):
                pass

            def log(self, data):
                fake.logs.append((kw["id"], data))

        return Run()

    def Image(self, path):
        return ("image", str(path))


def test_wandb_errors_name_the_key(monkeypatch):
    from opgrpo_stages.errors import ConfigError
    from opgrpo_stages.monitor import wandb_feed

    cfg = {"logging": {"wandb": {"project": "p", "mode": "online"}}}
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match=r"key 'logging.wandb' is set but the wandb package is not installed"):
        wandb_feed.check([cfg], "config.yaml")
    monkeypatch.setitem(sys.modules, "wandb", _FakeWandb(logged_in=False))
    with pytest.raises(ConfigError, match=r"key 'logging.wandb.mode' is online but wandb has no login"):
        wandb_feed.check([cfg], "config.yaml")
    wandb_feed.check([{"logging": {"wandb": {"project": "p", "mode": "offline"}}}], "config.yaml")  # no login needed
    wandb_feed.check([{"logging": {}}], "config.yaml")  # off: wandb not imported


def test_snakemake_without_wandb_stops_before_any_job(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(logging={"wandb": {"project": "x"}})))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'nowandb'}:{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "nowandb").mkdir()
    (tmp_path / "nowandb/wandb.py").write_text("raise ImportError('no wandb here')\n")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--cores", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0 and "key 'logging.wandb' is set but the wandb package is not installed" in res.stdout + res.stderr


def test_wandb_feed_sends_each_record_once_across_restarts(pipe, monkeypatch):
    """The same records as TensorBoard; a rerun or a restarted process does not send a step again."""
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.monitor import tensorboard, wandb_feed

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg_all = C.expand_seed_runs(yaml.safe_load((pipe / "config.yaml").read_text()))
    cfg = C.resolve_run(cfg_all, "opgrpo")
    cfg["logging"] = {"wandb": {"project": "opgrpo-test", "mode": "offline"}}
    monkeypatch.chdir(pipe)
    sent = {}
    for attempt in range(2):  # the second: a restarted pipeline (a new process: no open wandb run)
        monkeypatch.setattr(wandb_feed, "_RUNS", {})
        for k in range(ITERS):
            sent[("train", k)] = tensorboard.log_record(cfg, "opgrpo", "train", k, str(pipe / f"wb_train_{k}"))
            sent[("heldout", k)] = tensorboard.log_record(cfg, "opgrpo", "heldout", k, str(pipe / f"wb_heldout_{k}"))
    assert len(fake.inits) == 1 and fake.inits[0]["resume"] == "allow" and fake.inits[0]["mode"] == "offline"
    assert len({i["id"] for i in fake.inits}) == 1
    assert len(fake.logs) == 2 * ITERS  # each record once
    for (kind, k), rec in sent.items():
        (data,) = [d for _, d in fake.logs if d["iteration"] == k + 1 and any(t.startswith("heldout/") for t in d)
                   == (kind == "heldout")]
        assert {t: v for t, v in data.items() if t in rec} == rec
        if kind == "heldout":
            assert data["heldout/samples"] == ("image", L.eval_grid("opgrpo", k))
