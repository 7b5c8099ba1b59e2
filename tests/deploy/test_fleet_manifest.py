"""deploy/kubernetes/fleet-indexed-job.yaml agrees with the runner: shards, exit codes, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.errors import RETRY_SAFE
from runner.fleet.shard import Shard, shard_from
from runner.fleet.targets import parse_entry

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "fleet-indexed-job.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    found = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return {doc["kind"]: doc for doc in found}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in _container(job)["env"]}


def test_an_indexed_job_with_one_shard_per_index(docs: dict[str, dict[str, Any]]) -> None:
    spec = docs["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    # The runner cuts the targets into SAFE_MIGRATE_SHARDS slices: one per index.
    assert int(_env(docs["Job"])["SAFE_MIGRATE_SHARDS"]["value"]) == spec["completions"]
    assert "--shard" not in _container(docs["Job"])["args"]  # from JOB_COMPLETION_INDEX
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    assert 0 <= spec["maxFailedIndexes"] < spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_fail_index_on_exactly_the_codes_a_retry_cannot_fix(
        docs: dict[str, dict[str, Any]]) -> None:
    rules = docs["Job"]["spec"]["podFailurePolicy"]["rules"]
    first = rules[0]  # nothing may match a non-retry-safe code before it
    assert first["action"] == "FailIndex"
    assert first["onExitCodes"]["operator"] == "NotIn"
    assert first["onExitCodes"]["containerName"] == _container(docs["Job"])["name"]
    assert first["onExitCodes"]["values"] == sorted(int(c) for c in RETRY_SAFE)
    assert [r["action"] for r in rules[1:]] == ["Ignore"]
    assert rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_the_arguments_are_the_clis(docs: dict[str, dict[str, Any]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.main import build_parser

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    for name, entry in _env(docs["Job"]).items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    args = build_parser("upgrade").parse_args(_container(docs["Job"])["args"])
    assert args.targets == "/config/targets.yaml" and int(args.parallel) >= 1
    assert shard_from(args.shard) == Shard(1, int(docs["Job"]["spec"]["completions"]))
    assert "value" not in _env(docs["Job"])["DATABASE_URL"]  # from the Secret


def test_the_targets_config_map_is_a_valid_targets_file_without_urls(
        docs: dict[str, dict[str, Any]]) -> None:
    job = docs["Job"]
    config = docs["ConfigMap"]
    entries = yaml.safe_load(config["data"]["targets.yaml"])
    targets = [parse_entry(entry, "targets.yaml") for entry in entries]
    assert all(t.url is None for t in targets)  # URLs stay in Secrets
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(job)["volumeMounts"]}
    assert volumes[mounts["/config"]]["configMap"]["name"] == config["metadata"]["name"]
    for target in targets:
        if target.url_file:  # each url_file is inside a mounted Secret
            folder = str(Path(target.url_file).parent)
            assert "secret" in volumes[mounts[folder]], target.url_file
