"""`kill -9` of `glucobridge bulk start` mid-download, then `glucobridge bulk resume`: the job goes on from its record,
the files done before the kill are not fetched again, and the store holds each reading once (issue 12 acceptance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import BulkFile, BulkJob
from tests.bulk.conftest import CLIENT_ID, KID, BulkServer, Harness

GLUCOBRIDGE = str(Path(sys.executable).parent / "glucobridge")


def test_kill_9_mid_download_then_resume(bulk_server: BulkServer, sites_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "backend.pem"
    key.write_bytes(bulk_server.key_pem)
    database = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "DATABASE_URL": database, "SITES_DIR": str(sites_dir), "SMART_BACKEND_KEY_FILE": str(key),
           "SMART_BACKEND_KID": KID, "SMART_BACKEND_ALG": "RS384", "SMART_BACKEND_CLIENT_ID": CLIENT_ID,
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    faults = bulk_server.faults("oracle-like")
    faults.lines_per_file = 1000  # 18 files of readings and one of Patients: the kill lands early
    work = ["--work-dir", str(tmp_path / "bulk")]
    try:
        seen = []
        with subprocess.Popen([GLUCOBRIDGE, "bulk", "start", "oracle-like", *work], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as worker:  # fmt: skip
            assert worker.stdout is not None
            deadline = time.monotonic() + 60
            for line in worker.stdout:
                seen.append(line)
                if "file 1/" in line:
                    os.kill(worker.pid, signal.SIGKILL)
                    break
                assert time.monotonic() < deadline, seen
            worker.wait(10)
        assert worker.returncode == -signal.SIGKILL, seen
        store = Store(Settings(database_url=database))
        try:
            with store.transaction() as session:
                job = session.scalars(select(BulkJob)).one()
                assert job.state == "downloading"
                assert job.slot == 0  # the killed job still holds the site's only slot
                before = {f.id: (f.attempts, f.done_at) for f in session.scalars(select(BulkFile)) if f.state == "done"}
            assert 1 <= len(before) < 18
            again = subprocess.run([GLUCOBRIDGE, "bulk", "start", "oracle-like", *work], env=env,
                                   capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            assert again.returncode == 2
            assert "max_concurrent" in again.stderr
            resumed = subprocess.run([GLUCOBRIDGE, "bulk", "resume", "oracle-like", *work], env=env,
                                     capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            assert "resumed (downloading)" in resumed.stdout
            assert "complete" in resumed.stdout.splitlines()[-1]
            with store.transaction() as session:
                files = {f.id: f for f in session.scalars(select(BulkFile))}
            assert all(f.state == "done" for f in files.values())
            assert {i: (files[i].attempts, files[i].done_at) for i in before} == before  # not fetched again
            harness = Harness(store, bulk_server, None, tmp_path)  # type: ignore[arg-type]
            expected = bulk_server.reading_count("oracle-like")
            assert harness.readings() == (expected, expected)
            status = subprocess.run([GLUCOBRIDGE, "bulk", "status", "oracle-like"], env=env, capture_output=True,
                                    text=True, timeout=60, check=False)  # fmt: skip
            assert "watermark patient: _since" in status.stdout
            assert f"files 19/19, readings added {expected}" in status.stdout
        finally:
            store.dispose()
    finally:
        faults.lines_per_file = 5000
