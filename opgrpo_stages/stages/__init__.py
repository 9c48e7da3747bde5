"""Pipeline stages: plain functions from input files to output files (CLI in ``opgrpo_stages.cli``)."""
