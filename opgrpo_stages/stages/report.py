"""Rule ``report``: figures and tables of one experiment (a named group of runs), under
``results/<experiment>/``.

The stage only reads the runs and hands them to the report package's two entry points
(``opgrpo_stages/report/``): ``experiment`` (results, Tables 1 and 2, steps to target, the
per-experiment figures) and ``seeds`` (the paper's claims with intervals over seeds, ablations,
Figs. 2, 3, 6a, 6b). The `speedup` experiment (``outputs.kind``) has its own entry point,
``speedup`` (the pre-registered test of docs/speedup.md). The file list is ``outputs_for``."""

from __future__ import annotations

from pathlib import Path

from ..report.outputs import final_inputs, kind, outputs_for
from .common import log

__all__ = ["final_inputs", "outputs_for", "report"]


def report(cfg: dict, runs: list[str] | None = None, outputs: dict | None = None, exp: str = "main") -> dict:
    """The report of experiment ``exp`` (its runs ``runs``; files ``outputs``, default ``outputs_for(exp)``)."""
    from ..report import experiment, figures, seeds
    from ..report.load import collect

    figures.use_agg()
    runs = runs or list(cfg["runs"])
    out = {**outputs_for(exp), **(outputs or {})}
    for p in out.values():
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    data = collect(cfg, runs)
    if kind(exp) == "speedup":
        from ..report import speedup
        from ..report.load import stage_seconds

        res = speedup.write(cfg, runs, data, stage_seconds(cfg, runs), out)
        text = Path(out["speedup_md"]).read_text()
        log.info("speedup:\n%s", text)
        print(text)
        return {**res, "data": data}
    per_exp = experiment.write(cfg, runs, data, out)
    per_seed = seeds.write(cfg, data, out)
    table, head = per_exp["table"], per_exp["headline_text"]
    log.info("headline:\n%s", per_seed["headline"].to_string(index=False))
    log.info("Table 1:\n%s", per_exp["table1"].to_string(index=False))
    log.info("results:\n%s", table.to_string(index=False))
    log.info("steps to target:\n%s", head)
    print(table.to_string(index=False))
    print(head)
    return {"table": table, "speed": per_exp["speed"], "data": data, "table1": per_exp["table1"],
            "table2": per_exp["table2"], **per_seed}
