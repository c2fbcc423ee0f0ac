"""Pure helpers of the controller: the status merge patch and the peering rule."""

from datetime import timedelta

from sft_operator.api import Metrics, Progress, SFTJobStatus
from sft_operator.controller import is_active, needs_resync, status_patch
from tests.unit.operator.builders import NOW


def test_first_patch_writes_defaults_and_later_only_changes() -> None:
    new = SFTJobStatus(phase="Pending", restarts=0, attempt=0)
    first = status_patch({}, SFTJobStatus(), new)
    assert first["restarts"] == 0 and first["phase"] == "Pending"
    assert status_patch(new.wire(), new, new) == {}


def test_trainer_fields_are_left_alone_unless_the_operator_changed_them() -> None:
    old = SFTJobStatus(phase="Running", progress=Progress(step=5), metrics=Metrics(loss=2.0))  # an older read
    stored = {**old.wire(), "progress": {"step": 9}, "metrics": {"loss": 1.0}}  # the trainer patched since
    assert status_patch(stored, old, old.model_copy(update={"phase": "Restarting"})) == {"phase": "Restarting"}
    final = old.model_copy(update={"final_model": "/out/final"})
    assert status_patch(stored, old, final)["finalModel"] == "/out/final"


def test_removed_operator_keys_become_null() -> None:
    stored = {"phase": "Restarting", "nextAttemptTime": "2026-01-01T12:00:00Z"}
    new = SFTJobStatus(phase="Pending")
    assert status_patch(stored, SFTJobStatus(phase="Restarting"), new)["nextAttemptTime"] is None


def peer(priority: int, seconds_ago: float, lifetime: int = 20) -> dict:
    seen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def test_peering_rule() -> None:
    assert is_active(None, "me", 5, NOW)
    assert is_active({"me": peer(5, 0), "other": peer(3, 0)}, "me", 5, NOW)
    assert not is_active({"me": peer(5, 0), "other": peer(7, 0)}, "me", 5, NOW)
    assert not is_active({"other": peer(5, 0)}, "me", 5, NOW)  # same priority: kopf pauses both
    assert is_active({"other": peer(9, 60)}, "me", 5, NOW)  # a dead peer does not count


def test_resync_skips_long_finished_jobs_without_ttl() -> None:
    done = {"status": {"phase": "Succeeded", "completionTime": "2026-01-01T11:00:00Z"}, "spec": {}}
    assert not needs_resync(done, NOW)
    assert needs_resync({**done, "spec": {"runPolicy": {"ttlSecondsAfterFinished": 60}}}, NOW)
    recent = {"status": {"phase": "Failed", "completionTime": "2026-01-01T11:58:00Z"}, "spec": {}}
    assert needs_resync(recent, NOW)
    assert needs_resync({"status": {"phase": "Running"}}, NOW)
    assert needs_resync({}, NOW)
