"""--shard I/N: N processes cover every target exactly once; a killed shard converges."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fleet_support import create_schemas, fleet_json, tenant_project, tenants_yaml, versions
from support import spawn

from runner.errors import UsageError
from runner.fleet.shard import Shard, parse_shard, shard_from, shard_of


def fleet_args(ini: Path, url: str, targets: Path, artifacts: Path, *extra: str) -> list[str]:
    return ["upgrade", "-c", str(ini), "--database-url", url, "--targets", str(targets),
            "--artifacts-dir", str(artifacts), "--log-format", "json", "--lint", "off", *extra]


def test_a_shard_depends_on_the_name_alone() -> None:
    names = [f"tenant-{i}" for i in range(3000)]
    shards = [Shard(i, 7) for i in range(7)]
    owners = [[s.index for s in shards if s.owns(name)] for name in names]
    assert all(len(found) == 1 for found in owners)  # exactly one shard each
    sizes = [sum(found == [i] for found in owners) for i in range(7)]
    assert min(sizes) > 3000 / 7 * 0.8, sizes  # and an even spread
    # The documented function: blake2b(name, 8 bytes) big-endian mod N.
    import hashlib

    assert shard_of("acme", 5) == int.from_bytes(
        hashlib.blake2b(b"acme", digest_size=8).digest(), "big") % 5


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shards_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(text)


def test_shard_defaults_from_the_indexed_job() -> None:
    assert shard_from(None, {}) is None
    job = {"JOB_COMPLETION_INDEX": "2", "SAFE_MIGRATE_SHARDS": "4"}
    assert shard_from(None, job) == Shard(2, 4)
    assert shard_from("1/3", job) == Shard(1, 3)  # the flag decides
    with pytest.raises(UsageError, match="SAFE_MIGRATE_SHARDS"):
        shard_from(None, {"JOB_COMPLETION_INDEX": "2"})  # every pod would take every target
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        shard_from(None, {"SAFE_MIGRATE_SHARDS": "4"})


def test_three_shards_as_three_processes_cover_every_target_once(tmp_path: Path, db) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = [f"s{i:02d}" for i in range(30)]
    create_schemas(db, tenants)
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    url = db.render_as_string(hide_password=False)
    # Shard 0 from the flag; 1 and 2 as an Indexed Job's pods get them.
    procs = [spawn(fleet_args(project.ini, url, targets, tmp_path / "s0", "--shard", "0/3"))]
    procs += [spawn(fleet_args(project.ini, url, targets, tmp_path / f"s{i}"),
                    env={"JOB_COMPLETION_INDEX": str(i), "SAFE_MIGRATE_SHARDS": "3"})
              for i in (1, 2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert [c for c, _ in results] == [0, 0, 0], [e[-1500:] for _, e in results]
    seen: list[str] = []
    for i in range(3):
        report = fleet_json(tmp_path / f"s{i}")
        assert report["shard"] == f"{i}/3" and report["targets_total"] == 30
        assert report["counts"] == {"success": len(report["targets"])}
        seen += [t["name"] for t in report["targets"]]
    assert sorted(seen) == tenants  # each exactly once
    assert all(v == ["r3"] for v in versions(db, tenants).values())


def test_a_shard_killed_with_sigkill_converges_when_run_again(tmp_path: Path, db) -> None:
    slow = [("r1", 'op.create_table("accounts", sa.Column("id", sa.BigInteger))'),
            ("r2", 'op.execute("SELECT pg_sleep(0.2)")\n'
                   'op.add_column("accounts", sa.Column("nick", sa.Text))')]
    project = tenant_project(tmp_path / "project", slow)
    tenants = [f"k{i:02d}" for i in range(40)]
    create_schemas(db, tenants)
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    url = db.render_as_string(hide_password=False)
    args = fleet_args(project.ini, url, targets, tmp_path / "a", "--shard", "1/2",
                      "--parallel", "2")
    mine = [t for t in tenants if Shard(1, 2).owns(t)]
    proc = spawn(args, start_new_session=True)  # the pod: the parent and its workers
    deadline = time.monotonic() + 60
    while sum(v == ["r2"] for v in versions(db, mine).values()) < 3:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-1500:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    found = versions(db, mine)
    assert any(v != ["r2"] for v in found.values()), "killed too late to test anything"
    again = spawn(fleet_args(project.ini, url, targets, tmp_path / "b", "--shard", "1/2",
                             "--parallel", "2"))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-2000:]
    assert all(v == ["r2"] for v in versions(db, mine).values())
    report = fleet_json(tmp_path / "b")
    assert set(report["counts"]) <= {"success", "up-to-date"}
    assert report["counts"].get("up-to-date", 0) >= 3  # finished ones: no-ops
    others = [t for t in tenants if t not in mine]
    assert all(v == [] for v in versions(db, others).values())  # the other shard's, untouched
