"""Run-time changes: overrides take effect on the next call and are audited; edited files are re-read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bff.actors import SystemActor
from bff.capabilities import CapabilityError, CapabilityService, WriteMode
from bff.store.db import Store


def test_override_takes_effect_without_reload_and_is_audited(store: Store, sites_dir: Path) -> None:
    service = CapabilityService(store, sites_dir)
    assert service.get("epic-like").write.mode is WriteMode.FLOWSHEET_ONLY
    service.set("epic-like", "write.mode", "read_only", who="alice", reason="go-live paused")
    assert service.get("epic-like").write.mode is WriteMode.READ_ONLY
    other = CapabilityService(store, sites_dir)  # another worker sees it too
    assert other.get("epic-like").write.mode is WriteMode.READ_ONLY
    service.set("epic-like", "write.mode", "full", who="bob", reason="notes validated")
    assert service.get("epic-like").write.mode is WriteMode.FULL
    assert service.overrides("epic-like") == {"write.mode": "full"}

    events = service.history("epic-like")
    assert [(e.event, e.actor, e.detail["old"], e.detail["new"]) for e in events] == [
        ("site.capability.set", "bob", "read_only", "full"),
        ("site.capability.set", "alice", "flowsheet_only", "read_only"),
    ]
    assert events[1].detail["reason"] == "go-live paused"

    service.clear("epic-like", "write.mode", who="carol", reason="back to the file")
    assert service.get("epic-like").write.mode is WriteMode.FLOWSHEET_ONLY
    assert service.history("epic-like")[0].event == "site.capability.clear"


def test_invalid_override_is_refused_not_stored_and_audited(store: Store, sites_dir: Path) -> None:
    service = CapabilityService(store, sites_dir)
    with pytest.raises(CapabilityError, match="channel must not be none"):
        service.set("epic-like", "write.channel", "none", who="alice", reason="try")
    with pytest.raises(CapabilityError, match=r"\[bulk\] max_concurrent"):
        service.set("epic-like", "bulk.max_concurrent", 0, who="alice", reason="try")
    with pytest.raises(CapabilityError, match="who made it and why"):
        service.set("epic-like", "bulk.available", True, who="", reason="")
    with pytest.raises(CapabilityError, match="no such site"):
        service.set("nowhere", "bulk.available", True, who="a", reason="b")
    assert service.overrides("epic-like") == {}
    assert service.get("epic-like").write.channel.value == "fhir"
    assert [e.outcome for e in service.history("epic-like")] == ["refused", "refused"]


def test_file_change_is_picked_up_at_run_time(store: Store, sites_dir: Path) -> None:
    service = CapabilityService(store, sites_dir)
    path = sites_dir / "read-only.toml"
    assert service.get("read-only").bulk.available is False
    path.write_text(path.read_text() + "\n[bulk]\navailable = true\ngroup_ids = ['g1']\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    caps = service.get("read-only")
    assert caps.bulk.available is True
    assert caps.bulk.group_ids == ("g1",)


@pytest.mark.parametrize("name", ["outbox-worker", "Outbox-Worker", "  outbox-worker ", "OUTBOX-WORKER"])
def test_a_person_cannot_change_the_matrix_as_a_reserved_system_actor(store: Store, sites_dir: Path, name: str) -> None:
    """Only the worker, holding SystemActor.OUTBOX_WORKER, is recorded as outbox-worker (table row 12)."""
    service = CapabilityService(store, sites_dir)
    with pytest.raises(CapabilityError, match="reserved"):
        service.set("epic-like", "write.mode", "read_only", who=name, reason="forged degradation")
    assert service.overrides("epic-like") == {}
    service.set("epic-like", "write.mode", "read_only", who=SystemActor.OUTBOX_WORKER, reason="EHR answered 403")
    with pytest.raises(CapabilityError, match="reserved"):
        service.clear("epic-like", "write.mode", who=name, reason="undo as the worker")
    assert [(e.actor, e.outcome) for e in service.history("epic-like")] == [("outbox-worker", "allowed")]
