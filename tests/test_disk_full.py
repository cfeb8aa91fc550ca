"""A full disk under the state directory: `rampart serve` on a real small file system (a
tmpfs in the server's own mount namespace, tests/support/disk.py), filled while it serves.

- The state file's blocks are reserved at creation: a full disk is a one-line refusal at
  start, never a SIGBUS in a worker that touches a page for the first time.
- When SQLite cannot write (the rollout journal, the registry, the mailbox), the evaluator
  holds 100% champion with an alert, keeps ticking, and resumes once there is room.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.disk import MiB, fill, inside, namespaces, small_fs
from support.server import STATE_S, register_pair, serving, wait_for
from support.webhook import webhook
from test_evaluator import _rig

from guardrails.alerts import Alerter
from router.control import ControlBlock
from router.registry import Registry, Status
from router.shared_memory import SharedMemory

needs_mount = pytest.mark.skipif(
    namespaces() is None, reason="cannot mount a tmpfs in a private mount namespace here"
)


def _run(cmd: list[str]) -> tuple[int, str, str]:
    """Run `cmd` in its own session; the whole session is killed if it outlives 120 s."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err


# Plays a worker: the state file made on a nearly full disk, the disk filled up, then a
# first write to every page of the mapping (what new counters do over a rollout).
_FIRST_WRITES = """
import sys
from pathlib import Path
from router.shared_memory import Geometry, SharedMemory
state = Path(sys.argv[1])
shm = SharedMemory.open(state, Geometry(n_slabs=4, n_cells=64, n_buckets=100))
try:
    with open(state / "filler", "wb", buffering=0) as f:
        while True:
            f.write(bytes(4096))
except OSError:
    pass
shm.slabs.view("u1")[...] = 1
print("wrote", shm.slabs.nbytes)
"""


@needs_mount
def test_state_file_blocks_are_reserved_so_a_full_disk_never_sigbuses(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    cmd = [sys.executable, "-c", _FIRST_WRITES, str(mount)]
    code, out, err = _run([*small_fs(mount, 8 * MiB), *cmd])
    assert code == 0, f"exit {code} ({'SIGBUS' if code == -signal.SIGBUS else err})"
    assert out.startswith("wrote ")


@needs_mount
def test_serve_refuses_to_start_when_the_state_file_does_not_fit(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    cmd = [sys.executable, "-m", "rampart.cli", "serve", "--state-dir", str(mount / "state")]
    code, _, stderr = _run([*small_fs(mount, 1 * MiB), *cmd, "--port", "0"])
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rampart: no room for the state file in {mount / 'state'} (")
    assert lines[0].endswith("MiB needed): No space left on device")


def _predict(url: str, i: int) -> httpx.Response:
    # Segments and predictions spread over many counter cells: pages a sparse state file
    # would only now need blocks for.
    segment = {
        "publisher_category": ["news", "sports", "games", "other"][i % 4],
        "device_type": ["mobile", "desktop", "tablet"][i % 3],
        "country_tier": ["tier1", "tier2", "tier3"][i % 3],
        "creative_type": ["banner", "video", "native"][(i // 3) % 3],
    }
    row = [i % 7 / 7, 1 - i % 5 / 5, (i % 11) / 11, 0.5]
    body = {"request_id": f"full-{i}", "features": [row], "segment": segment}
    return httpx.post(f"{url}/predict", json=body, timeout=10)


@needs_mount
def test_full_disk_holds_the_rollout_at_champion_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = register_pair(tmp_path / "seed")
    config = tmp_path / "rampart.toml"
    config.write_text("[rollout]\njournal_every_s = 1.0\n")  # the journal writes every tick
    mount = tmp_path / "disk"
    with webhook() as hook:
        monkeypatch.setenv("RAMPART_SLACK_WEBHOOK", f"{hook.url}/slack")
        prefix = small_fs(mount, 32 * MiB, copy_from=seed)
        with serving(mount, config=config, prefix=prefix) as server:
            server.start_rollout("2")
            root = inside(server.proc.pid, mount)
            shm = SharedMemory.attach(root)
            control = ControlBlock(shm)
            pid = control.evaluator_pid
            split = control.read().split_bp
            assert split == 300

            filler = fill(root)
            held = wait_for(
                lambda: control.read().split_bp == 0 and control.read(),
                STATE_S,
                "the split held at 100% champion",
            )
            assert held.has_challenger  # held, not ended: the challenger stays loaded
            alert = hook.wait_for(1)[0].body["text"]
            assert "held at 100% champion" in alert and "phase 1" in alert

            # Workers keep answering, and count, on a full disk (no SIGBUS).
            for i in range(200):
                r = _predict(server.url, i)
                assert r.status_code == 200, r.text
                assert r.json()["arm"] == "champion"
            # An admin command cannot be queued: a clear 503, not a crash.
            r = server.admin("pause")
            assert (r.status_code, r.json()["error"]) == (503, "mailbox_unavailable")
            # The evaluator keeps ticking: the same process, its heartbeat moving on.
            beat = control.heartbeat_ns()
            wait_for(lambda: control.heartbeat_ns() > beat, STATE_S, "a heartbeat on a full disk")
            assert control.evaluator_pid == pid
            assert server.proc.poll() is None

            filler.unlink()
            wait_for(lambda: control.read().split_bp == split, STATE_S, "the split back")
            assert control.evaluator_pid == pid  # resumed, not restarted
            # SQLite resolves /proc/PID/root to "/": read a copy of the journal from here.
            copy = tmp_path / "journal"
            copy.mkdir()
            for name in ("rollouts.db", "rollouts.db-wal"):
                shutil.copyfile(root / name, copy / name)
            db = sqlite3.connect(copy / "rollouts.db")
            try:
                rows = db.execute("SELECT data FROM events WHERE kind = 'held'").fetchall()
            finally:
                db.close()
            assert len(rows) == 1 and '"held_s"' in rows[0][0]
            server.wait_for_status(
                lambda s: s["state"] == "running" and s["split_bp"] == split, "status again"
            )
            shm.close()


def test_a_rollback_cut_short_by_storage_is_finished_when_it_returns(tmp_path: Path) -> None:
    # The registry refuses writes (PRAGMA query_only: SQLite's own SQLITE_READONLY, one of
    # the storage faults) when the breach is seen: the flip happens, its records cannot.
    rig = _rig(tmp_path, Alerter(None, None))
    try:
        rig.start()
        registry = rig.evaluator.registry
        assert isinstance(registry, Registry)
        registry._db.execute("PRAGMA query_only = ON")
        rig.run(60, challenger={"errors": 5})
        ev = rig.evaluator
        assert ev.hold.reason is not None and "readonly" in ev.hold.reason
        assert rig.split() == 0
        r = ev.rollout
        assert r is not None and r.state == "running"  # decided, not yet recorded
        for _ in range(3):  # held ticks: nothing decided, nothing raised
            rig.step()
        assert rig.split() == 0 and ev.hold.reason is not None

        registry._db.execute("PRAGMA query_only = OFF")
        rig.step()
        assert ev.hold.reason is None
        assert r.state == "rolled_back" and rig.split() == 0  # never back to the challenger
        assert Registry(rig.config.state_path).get(2).status == Status.FAILED
        kinds = [e.kind for e in ev.journal.events(r.id) if e.kind != "metrics"]
        assert kinds[-2:] == ["held", "rolled_back"]
    finally:
        rig.evaluator.close()
