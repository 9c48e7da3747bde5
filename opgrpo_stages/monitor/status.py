"""``opgrpo status``: how the runs of a Snakemake command are going, read from the files alone.

    opgrpo status                                   the default target's runs (and any other run with files)
    opgrpo status ablations --config 'train={iterations: 2}'     the same arguments as the snakemake command
    opgrpo status --profile profiles/slurm --configfile presets/sd35_geneval.yaml --watch 30

Everything but ``--watch``/``--run`` is read as Snakemake reads it (its own argument parser: profiles,
``--configfile``, ``--config`` overrides, ``-d``, targets), so the runs and their lengths are those
of that command. Per run: iterations finished / total, where the next one stands, the last training
reward (fresh samples, as the report's curve) and held-out score, seconds per iteration (median of
the last intervals between finished iterations, which includes everything the run waited for) and
the time to finish at that pace. An iteration is finished when its ``update_metrics.parquet`` exists
(policy_update's last output, never pruned).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import statistics
import time
from pathlib import Path

import yaml

from .. import config as C
from .. import layout as L
from ..errors import ConfigError

_STAGES = (("rollout", L.samples), ("score", L.rewards), ("buffer_update", lambda r, k: L.buffer(r, k)[1]),
           ("policy_update", L.metrics))
RECENT = 5  # intervals in the median of seconds per iteration


def snakemake_config(argv: list[str]) -> tuple[dict, list[str]]:
    """The merged, seed-expanded config and the targets of a Snakemake command line, as the Snakefile
    builds them (config.yaml, each --configfile, then --config overrides). Changes into ``-d``."""
    from snakemake.cli import parse_args, parse_config

    argv = list(argv)
    for i in range(len(argv) - 1):  # `opgrpo status --config FILE` (every other command's meaning): a config file
        if argv[i] == "--config" and "=" not in argv[i + 1] and Path(argv[i + 1]).is_file():
            argv[i] = "--configfile"
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:  # "Using profile ..." and usage text
            _, args = parse_args(argv)
    except SystemExit:
        msg = [line for line in err.getvalue().splitlines() if "error" in line]
        raise ConfigError(f"snakemake arguments {argv}: {msg[-1] if msg else 'not understood'}") from None
    if args.directory:
        os.chdir(args.directory)
    files = [str(f) for f in (args.configfile or [])]
    names = (["config.yaml"] if Path("config.yaml").exists() else []) + files
    raw: dict = {}
    for f in names:
        if not Path(f).exists():
            raise ConfigError(f"{f}: config file does not exist")
        raw = C.deep_merge(raw, yaml.safe_load(Path(f).read_text()) or {})
    over = parse_config(args.config) if args.config else {}
    raw = C.deep_merge(raw, over)
    C.retype_cli_overrides(raw, over)
    C.validate(raw, " + ".join(names + (["--config"] if over else [])) or "defaults")
    C.expand_seed_runs(raw)
    L.set_root(raw["output_root"])
    return raw, list(args.targets or [])


def runs_of(cfg_all: dict, targets: list[str]) -> list[str]:
    """The runs a Snakemake command with these targets trains: each experiment target's runs, the run of
    each file target; no target (or ``all``): the ``main`` runs and every other run with files."""
    exps, runs = cfg_all["experiments"], cfg_all["runs"]
    out: list[str] = []
    file_run = re.compile(rf"^{re.escape(L.RUNS)}/([^/]+)/")
    result_exp = re.compile(rf"^{re.escape(L.RESULTS)}/([^/]+)/")
    for t in targets or ["all"]:
        t = os.path.normpath(t)
        if t == "all":
            out += exps["main"] + [r for r in runs if Path(L.state_dir(r, -1)).exists() or Path(L.iter_dir(r, 0)).exists()]
        elif t in exps:
            out += exps[t]
        elif (m := file_run.match(t)) and m.group(1) in runs:
            out.append(m.group(1))
        elif (m := result_exp.match(t)) and m.group(1) in exps:
            out += exps[m.group(1)]
    return list(dict.fromkeys(out))


def _duration(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def seconds_per_iteration(run: str, done: list[int]) -> tuple[float, str] | None:
    """(seconds, how) from the last finished iterations: the median interval between their
    update_metrics files' times; with one finished iteration, its benchmarked stages' sum."""
    from .records import stage_seconds

    times = sorted(os.stat(L.metrics(run, k)).st_mtime for k in done[-(RECENT + 1):])
    gaps = [b - a for a, b in zip(times, times[1:])]
    if gaps:
        return statistics.median(gaps), f"median of the last {len(gaps)}"
    if done and (s := stage_seconds(run, done[-1])):
        return sum(s.values()), "its stages' benchmark"
    return None


def _training_reward(run: str, k: int) -> str:
    from ..formats import tables

    try:
        smp, rew = tables.read(L.samples(run, k), "samples"), tables.read(L.rewards(run, k), "rewards")
    except Exception as exc:  # pruned or being rewritten: say so, do not fail the status
        return f"training reward: unreadable ({exc})"
    fresh = rew["reward"].to_numpy()[smp["source"].to_numpy() == "fresh"]
    return f"training reward {fresh.mean():.4f} (fresh samples, iteration {k})" if len(fresh) else \
        f"training reward: no fresh samples in iteration {k}"


def _heldout(cfg: dict, run: str) -> str:
    from ..formats import tables
    from ..geneval import summarize

    evals = [k for k in L.eval_iterations(cfg) if Path(L.eval_table(run, k)).exists()]
    if not evals:
        return "held-out: not evaluated yet"
    k = evals[-1]
    try:
        df = tables.read(L.eval_table(run, k), "eval")
    except Exception as exc:
        return f"held-out: unreadable ({exc})"
    overall = summarize(list(df["tag"]), list(df["correct"]))["overall"]
    return f"held-out GenEval {overall:.4f}, reward {df['reward'].mean():.4f} (after iteration {k})"


def run_status(cfg: dict) -> str:
    run, n = cfg["run"], cfg["train"]["iterations"]
    done = [k for k in range(n) if Path(L.metrics(run, k)).exists()]
    last = max(done) if done else -1
    head = f"{run}: {last + 1}/{n} iterations finished"
    if last >= 0:
        head += f" (current: iteration {last}, {L.iter_dir(run, last)})"
    if len(done) != last + 1:
        missing = sorted(set(range(last + 1)) - set(done))
        head += f"; iterations without metrics: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
    if last + 1 < n:
        nxt = last + 1
        have = [name for name, path in _STAGES if Path(path(run, nxt)).exists()]
        head += f"; next: iteration {nxt}, " + (f"done: {', '.join(have)}" if have else "not started")
    evals = [k for k in L.eval_iterations(cfg) if Path(L.eval_table(run, k)).exists()]
    head += f"; evaluated: {len(evals)}/{len(L.eval_iterations(cfg))}"
    if last < 0:
        return head
    fields = [_training_reward(run, last), _heldout(cfg, run)]
    pace = seconds_per_iteration(run, done)
    if pace:
        s, how = pace
        fields.append(f"{_duration(s)}/iteration ({how})")
        left = n - len(done)
        fields.append("finished" if left == 0 else f"ETA {_duration(left * s)} ({left} iterations left)")
    else:
        fields.append("seconds per iteration: unknown")
    return head + "\n    " + "; ".join(fields)


def status(cfg_all: dict, runs: list[str] | None = None) -> str:
    """One entry per run (default: every run of the seed-expanded config)."""
    return "\n".join(run_status(C.resolve_run(cfg_all, r)) for r in (runs or list(cfg_all["runs"])))


def main(argv: list[str]) -> int:
    """``opgrpo status [--watch [SECONDS]] [--run RUN] [snakemake arguments]``."""
    import argparse

    p = argparse.ArgumentParser(prog="opgrpo status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watch", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                   help="print again every SECONDS (default 10) until Ctrl-C")
    p.add_argument("--run", action="append", default=None, help="only this run (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true")
    ours, rest = p.parse_known_args(argv)
    cfg_all, targets = snakemake_config(rest)
    runs = ours.run or runs_of(cfg_all, targets)
    unknown = [r for r in runs if r not in cfg_all["runs"]]
    if unknown:
        raise ConfigError(f"--run {unknown[0]!r}: not a run of this config (defined: {sorted(cfg_all['runs'])})")
    if not runs:
        raise ConfigError(f"targets {targets}: no run of this config is among them (experiments: {sorted(cfg_all['experiments'])})")
    if ours.watch is None:
        print(status(cfg_all, runs))
        return 0
    try:
        while True:
            text = status(cfg_all, runs)
            print(f"\033[H\033[J{time.strftime('%H:%M:%S')}  (every {ours.watch:g} s; Ctrl-C ends)\n{text}", flush=True)
            time.sleep(max(ours.watch, 0.5))
    except KeyboardInterrupt:
        return 0
