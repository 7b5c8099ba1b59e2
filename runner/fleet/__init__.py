"""Fleets: one upgrade over many databases or tenant schemas (`--targets FILE`).

targets: the file / query and each target's URL; shard: `--shard I/N`; pool: the worker
processes, canary, max-failures; report: fleet.json, the summary and the overall exit code;
run: one target through the single-database upgrade (UpgradeJob + Migrator).
"""
