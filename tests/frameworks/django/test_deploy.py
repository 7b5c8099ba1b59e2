"""deploy/kubernetes/django/job.yaml is job.yaml with Django's command: one Job to maintain."""

from __future__ import annotations

import copy

import yaml
from support import REPO

KUBE = REPO / "deploy" / "kubernetes"


def test_the_django_job_is_the_alembic_job_with_django_s_command():
    plain = yaml.safe_load((KUBE / "job.yaml").read_text())
    django = yaml.safe_load((KUBE / "django" / "job.yaml").read_text())
    container = django["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["upgrade", "--framework", "django", "--settings",
                                 "mysite.settings"]
    expected = copy.deepcopy(plain)
    expected["metadata"]["name"] = "safe-migrate-django"
    mine = expected["spec"]["template"]["spec"]["containers"][0]
    mine.update(args=container["args"], image=container["image"], workingDir="/app")
    assert django == expected
