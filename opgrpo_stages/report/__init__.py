"""The report: an experiment's runs read once, then tables and figures.

- ``outputs``: the files a report writes and the ``final_eval`` tables it reads (layout only).
- ``stats``: the statistics (smoothing, crossings, intervals over seeds: t, BCa bootstrap, degenerate
  groups); no I/O.
- ``speedup_stats``: the `speedup` experiment's pre-registered estimator (docs/speedup.md: R, its
  paired BCa interval, the decision, the guard, the secondaries); no I/O.
- ``load``: reads the run files into ``data``.
- ``methods``: runs grouped into methods (seed repeats), reference methods, per-run curves.
- ``tables``: CSV/Markdown writers, cell formats, the paper's Tables 1 and 2.
- ``figures``: every figure (matplotlib).
- ``experiment``, ``seeds``, ``speedup``: the entry points (per experiment; aggregated over seeds;
  the `speedup` experiment, chosen by ``outputs.kind``); they import the modules above, which never
  import them.
"""
