"""Prompt sources in one place: the shipped sets (``packaged``) and the per-``source:`` logic that
turns a config's prompt set into records (``sources``). The file format is
opgrpo_stages/formats/prompts.py, the embedded world's grammar opgrpo_stages/world/prompts.py and
GenEval's prompt space opgrpo_stages/geneval/prompts.py."""
