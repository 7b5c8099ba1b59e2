"""The artifacts directory and the progress journal (no database)."""

from __future__ import annotations

import json
import stat

from runner.artifacts import PROGRESS_FILE, RUN_FILE, Artifacts, load_run


def _run_dir(tmp_path):
    artifacts = Artifacts(tmp_path / "run")
    artifacts.prepare()
    artifacts.write_json(RUN_FILE, {"outcome": "running", "running_revision": None})
    return artifacts


def test_the_journal_holds_the_latest_record_even_after_a_longer_one(tmp_path):
    artifacts = _run_dir(tmp_path)
    journal = artifacts.journal()
    journal.record({"running_revision": "a_much_longer_revision_id", "attempt": 1})
    journal.record({"running_revision": "r2", "attempt": 2})
    journal.close()
    text = (artifacts.directory / PROGRESS_FILE).read_text()
    assert json.loads(text) == {"running_revision": "r2", "attempt": 2}
    assert load_run(artifacts.directory)["running_revision"] == "r2"


def test_the_journal_is_owner_only_from_the_start(tmp_path):
    artifacts = _run_dir(tmp_path)
    artifacts.journal().close()
    mode = stat.S_IMODE((artifacts.directory / PROGRESS_FILE).stat().st_mode)
    assert mode == 0o600


def test_a_run_killed_before_its_first_step_keeps_run_json_s_own_answer(tmp_path):
    artifacts = _run_dir(tmp_path)
    artifacts.write_json(RUN_FILE, {"outcome": "running", "running_revision": "r1"})
    artifacts.journal().close()  # opened, nothing recorded yet: an empty file
    assert load_run(artifacts.directory)["running_revision"] == "r1"


def test_a_finished_run_ignores_the_journal(tmp_path):
    artifacts = _run_dir(tmp_path)
    artifacts.write_json(RUN_FILE, {"outcome": "success", "running_revision": None})
    journal = artifacts.journal()
    journal.record({"running_revision": "r9", "attempt": 1})
    journal.close()
    assert load_run(artifacts.directory)["running_revision"] is None


def test_a_run_killed_in_a_non_transactional_step_is_read_from_its_pre_step_record(tmp_path):
    artifacts = _run_dir(tmp_path)
    record = {"revision": "r2", "transactional": False, "pre_step": {"oids": [1]}}
    artifacts.write_text("pre-step-r2.json", json.dumps(record))
    journal = artifacts.journal()
    journal.record({"running_revision": "r2", "attempt": 1})
    journal.close()
    assert load_run(artifacts.directory)["running"] == record


def test_a_run_killed_in_a_later_transactional_step_has_no_running_record(tmp_path):
    artifacts = _run_dir(tmp_path)
    artifacts.write_text("pre-step-r2.json", json.dumps({"revision": "r2"}))
    journal = artifacts.journal()
    journal.record({"running_revision": "r3", "attempt": 1})  # r2 finished; r3 left nothing
    journal.close()
    assert load_run(artifacts.directory).get("running") is None
