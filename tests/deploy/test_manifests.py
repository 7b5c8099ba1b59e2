"""The deploy files agree with the runner's contract (no cluster, no Docker, no database).

The Kubernetes podFailurePolicy must retry exactly the exit codes the runner calls retry-safe
(runner.errors.RETRY_SAFE); the Jobs must keep their hardening; the Helm and Argo CD variants
must stay the same Job as deploy/kubernetes/job.yaml plus their hook annotations; and the
Dockerfile must build a non-root image whose entrypoint is the console script.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.errors import RETRY_SAFE, ExitCode

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
ARTIFACTS_DIR = "/artifacts"

JOB_FILES = ["job.yaml", "helm-hook-job.yaml", "argocd-presync-job.yaml"]
HOOK_ANNOTATIONS = {
    "helm-hook-job.yaml": {
        "helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    },
    "argocd-presync-job.yaml": {
        "argocd.argoproj.io/hook": "PreSync",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
    },
}


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


#: The fleet's Indexed Job has tests of its own (tests/deploy/test_fleet_manifest.py).
FLEET_JOB = "fleet-indexed-job.yaml"


def _jobs() -> dict[str, dict[str, Any]]:
    jobs = {}
    for path in sorted(p for p in KUBE.glob("*.yaml") if p.name != FLEET_JOB):
        for doc in _load(path):
            if doc.get("kind") == "Job":
                assert path.name not in jobs, f"{path.name}: one Job per file"
                jobs[path.name] = doc
    return jobs


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict[str, Any]]:
    found = _jobs()
    assert set(found) == set(JOB_FILES), f"Job manifests: {sorted(found)}, expected {JOB_FILES}"
    return found


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Job runs exactly one container"
    return containers[0]


def env_value(job: dict[str, Any], name: str) -> str | None:
    for entry in _container(job)["env"]:
        if entry["name"] == name:
            return entry.get("value")
    return None


def _exit_code_rules(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r]


# -- (a) exit codes ------------------------------------------------------------------------
@pytest.mark.parametrize("name", JOB_FILES)
def test_pod_failure_policy_retries_exactly_the_retry_safe_codes(
    jobs: dict[str, dict[str, Any]], name: str
) -> None:
    job = jobs[name]
    rules = _exit_code_rules(job)
    fail_job = [
        r for r in rules if r["action"] == "FailJob" and r["onExitCodes"]["operator"] == "NotIn"
    ]
    assert len(fail_job) == 1, f"{name}: one FailJob rule with operator NotIn"
    on_exit = fail_job[0]["onExitCodes"]
    assert on_exit["containerName"] == _container(job)["name"]
    assert {int(c) for c in on_exit["values"]} == {int(c) for c in RETRY_SAFE}
    # The API wants the values ordered and unique.
    assert on_exit["values"] == sorted(set(on_exit["values"]))
    # It must be the first rule: nothing may match a non-retry-safe exit code before it.
    assert job["spec"]["podFailurePolicy"]["rules"][0] is fail_job[0]


@pytest.mark.parametrize("name", JOB_FILES)
def test_every_exit_code_named_is_one_of_the_runners(
    jobs: dict[str, dict[str, Any]], name: str
) -> None:
    known = {int(c) for c in ExitCode}
    for rule in _exit_code_rules(jobs[name]):
        for value in rule["onExitCodes"]["values"]:
            assert isinstance(value, int) and value in known, f"{name}: exit code {value!r}"


@pytest.mark.parametrize("name", JOB_FILES)
def test_disruptions_are_ignored(jobs: dict[str, dict[str, Any]], name: str) -> None:
    rules = jobs[name]["spec"]["podFailurePolicy"]["rules"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert [c["type"] for r in ignore for c in r.get("onPodConditions", [])] == ["DisruptionTarget"]


# -- (b) the Job's shape and hardening -----------------------------------------------------
@pytest.mark.parametrize("name", JOB_FILES)
def test_job_shape(jobs: dict[str, dict[str, Any]], name: str) -> None:
    job = jobs[name]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = _container(job)
    assert job["apiVersion"] == "batch/v1"
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    assert pod["terminationGracePeriodSeconds"] >= 10  # time to roll back and exit 8
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["args"][0] == "upgrade"
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("name", JOB_FILES)
def test_job_security_context(jobs: dict[str, dict[str, Any]], name: str) -> None:
    job = jobs[name]
    pod_ctx = job["spec"]["template"]["spec"].get("securityContext", {})
    ctx = _container(job)["securityContext"]

    def effective(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") not in (None, 0)
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert not ctx["capabilities"].get("add")
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", JOB_FILES)
def test_database_url_comes_from_a_secret(jobs: dict[str, dict[str, Any]], name: str) -> None:
    env = {e["name"]: e for e in _container(jobs[name])["env"]}
    ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert "value" not in env["DATABASE_URL"], "never inline the URL"


@pytest.mark.parametrize("name", JOB_FILES)
def test_writable_paths_are_empty_dirs(jobs: dict[str, dict[str, Any]], name: str) -> None:
    job = jobs[name]
    container = _container(job)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in (ARTIFACTS_DIR, "/tmp"):
        assert path in mounts, f"{name}: nothing mounted at {path}"
        assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} is not an emptyDir"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("SAFE_MIGRATE_ARTIFACTS_DIR", ARTIFACTS_DIR) == ARTIFACTS_DIR


def test_settings_names_used_exist_in_the_runner(jobs: dict[str, dict[str, Any]]) -> None:
    """A misspelt SAFE_MIGRATE_* variable would be silently ignored: check each is read."""
    source = "\n".join(p.read_text() for p in (ROOT / "runner").rglob("*.py"))
    names = {e["name"] for job in jobs.values() for e in _container(job)["env"]}
    names |= set(re.findall(r"\b(SAFE_MIGRATE_[A-Z_]+|ALEMBIC_CONFIG)=", DOCKERFILE.read_text()))
    for name in sorted(names):
        if name.startswith("SAFE_MIGRATE_") or name in ("DATABASE_URL", "ALEMBIC_CONFIG"):
            assert f'"{name}"' in source, f"{name} is not read anywhere in runner/"
    assert env_value(jobs["job.yaml"], "SAFE_MIGRATE_LOG_FORMAT") == "json"


def _ci_command_lines() -> list[str]:
    """Every `safe-migrate ...` command line in the CI examples."""
    lines = []
    github = yaml.safe_load((ROOT / "deploy" / "ci" / "github-actions.yml").read_text())
    for job in github["jobs"].values():
        lines += [step["run"] for step in job["steps"] if "run" in step]
    gitlab = yaml.safe_load((ROOT / "deploy" / "ci" / "gitlab-ci.yml").read_text())
    for job in gitlab.values():
        if isinstance(job, dict) and "script" in job:
            lines += job["script"]
    return [line.strip() for line in lines if line.strip().startswith("safe-migrate ")]


def _parse_cli(argv: list[str]) -> None:
    from runner.main import build_parser

    parser = build_parser()
    commands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    if argv[0] not in commands:
        pytest.skip(f"`safe-migrate {argv[0]}` is not implemented yet")
    parser.parse_args(argv)


@pytest.mark.parametrize("name", JOB_FILES)
def test_job_arguments_are_accepted_by_the_cli(jobs: dict[str, dict[str, Any]], name: str) -> None:
    _parse_cli(_container(jobs[name])["args"])


@pytest.mark.parametrize("line", _ci_command_lines())
def test_ci_command_lines_are_accepted_by_the_cli(line: str) -> None:
    _parse_cli(shlex.split(line)[1:])


def test_ci_examples_keep_the_artifacts() -> None:
    github = yaml.safe_load((ROOT / "deploy" / "ci" / "github-actions.yml").read_text())
    steps = github["jobs"]["deploy"]["steps"]
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(upload) == 1 and upload[0]["if"] == "always()"
    migrate = [s["run"] for s in steps if "safe-migrate upgrade" in s.get("run", "")]
    assert len(migrate) == 1 and "--artifacts-dir migration-artifacts" in migrate[0]
    assert upload[0]["with"]["path"].rstrip("/") == "migration-artifacts"
    gitlab = yaml.safe_load((ROOT / "deploy" / "ci" / "gitlab-ci.yml").read_text())
    assert gitlab["deploy"]["artifacts"]["when"] == "always"
    assert gitlab["deploy"]["artifacts"]["paths"] == ["migration-artifacts/"]


# -- (c) the hook variants -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HOOK_ANNOTATIONS))
def test_hook_variants_carry_their_annotations(
    jobs: dict[str, dict[str, Any]], name: str
) -> None:
    annotations = jobs[name]["metadata"].get("annotations", {})
    for key, value in HOOK_ANNOTATIONS[name].items():
        assert annotations.get(key) == value, f"{name}: {key}"


@pytest.mark.parametrize("name", sorted(HOOK_ANNOTATIONS))
def test_hook_variants_are_the_plain_job(jobs: dict[str, dict[str, Any]], name: str) -> None:
    """The variants differ from job.yaml only by their annotations: one Job to maintain."""
    plain = copy.deepcopy(jobs["job.yaml"])
    variant = copy.deepcopy(jobs[name])
    variant["metadata"].pop("annotations")
    plain["metadata"].pop("annotations", None)
    assert variant == plain


def test_plain_job_has_no_hook_annotations(jobs: dict[str, dict[str, Any]]) -> None:
    annotations = jobs["job.yaml"]["metadata"].get("annotations", {})
    assert not any(k.startswith(("helm.sh/", "argocd.argoproj.io/")) for k in annotations)


# -- (d) the Dockerfile --------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_is_multi_stage() -> None:
    froms = [args for kw, args in _instructions() if kw == "FROM"]
    assert len(froms) > 1


def test_dockerfile_entrypoint_and_command() -> None:
    instructions = _instructions()
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM"):]
    entrypoints = [args for kw, args in final if kw == "ENTRYPOINT"]
    assert entrypoints == ['["safe-migrate"]']
    assert [args for kw, args in final if kw == "CMD"] == ['["upgrade"]']


def test_dockerfile_runs_as_the_jobs_non_root_user(jobs: dict[str, dict[str, Any]]) -> None:
    instructions = _instructions()
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM"):]
    users = [args for kw, args in final if kw == "USER"]
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "numeric, so that runAsNonRoot can be checked by the kubelet"
    assert int(user) != 0
    for job in jobs.values():
        assert _container(job)["securityContext"]["runAsUser"] == int(user)


def test_dockerfile_environment_for_a_read_only_root() -> None:
    env: dict[str, str] = {}
    for kw, args in _instructions():
        if kw == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    assert env["SAFE_MIGRATE_ARTIFACTS_DIR"] == ARTIFACTS_DIR
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
