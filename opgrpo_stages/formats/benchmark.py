"""Snakemake's benchmark files (``benchmark:`` of a rule, paths ``layout.benchmark``): a TSV with a
header row and one row per repeat of the job; the column ``s`` is its wall-clock seconds. Written by
Snakemake, never by us; read by the report (`speedup`: seconds per iteration) and the monitor."""

from __future__ import annotations


def seconds(path) -> float:
    """Wall-clock seconds of the job (the last repeat's ``s``). A missing, empty or malformed file
    raises ValueError naming it."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t")
        return float(df["s"].iloc[-1])
    except (OSError, KeyError, IndexError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not a Snakemake benchmark file with a column 's' (wall seconds): {e}") from e
