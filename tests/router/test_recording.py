from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router import control, layout, recording, shared_memory
from router.layout import Counter

GEOMETRY = shared_memory.Geometry(n_slabs=3, n_cells=16, n_buckets=100)


def test_record_kernels_write_their_slot_only(tmp_path: Path) -> None:
    shm = shared_memory.SharedMemory.open(tmp_path, GEOMETRY)
    addr = shm.slot_address(1, 1)
    recording.record_request(addr, 1500, 4, 1)
    assert recording.record_predictions(addr, np.array([[0.1005], [0.9005]], dtype=np.float32)) == 0
    tables = layout.table_words(16, 100)
    recording.record_event(addr, tables, 4, 2, 0, 0.025)
    recording.record_event(addr, tables, 4, 2, 1, 0.025)
    mine = shm.slabs["slots"][1, 1]
    assert mine["counters"][Counter.REQUESTS] == 1
    assert mine["counters"][Counter.CANDIDATES] == 2
    assert mine["latency"].sum() == 1
    assert list(mine["seg_requests"][4]) == [1, 1]
    assert list(mine["seg_events"][4]) == [1, 1]
    assert mine["seg_pred_sum"][4] == pytest.approx(0.025)
    assert list(mine["bucket_events"][2]) == [1, 1]
    assert mine["pred_hist"][100] == 1 and mine["pred_hist"][900] == 1
    others = [shm.slabs["slots"][i, s] for i in range(3) for s in range(2) if (i, s) != (1, 1)]
    assert all(o["counters"].sum() == 0 and o["latency"].sum() == 0 for o in others)


def test_request_recorder_records_as_the_kernel_does(tmp_path: Path) -> None:
    shm = shared_memory.SharedMemory.open(tmp_path, GEOMETRY)
    record = recording.request_recorder()
    recording.record_request(shm.slot_address(0, 0), 1500, 4, 1)
    record(shm.slot_address(0, 1), 1500, 4, 1)
    assert shm.slabs["slots"][0, 0].tobytes() == shm.slabs["slots"][0, 1].tobytes()
    assert shm.slabs["slots"][0, 1]["counters"][Counter.REQUESTS] == 1
    with pytest.raises(TypeError):  # it converts its arguments with int(), no further
        record(shm.slot_address(0, 1), None, 4, 1)


@pytest.mark.parametrize(
    ("values", "counter"),
    [
        pytest.param([0.5, np.nan], Counter.ERR_NAN, id="nan"),
        pytest.param([0.5, 1.5], Counter.ERR_RANGE, id="above-one"),
        pytest.param([-0.1, 0.5], Counter.ERR_RANGE, id="negative"),
    ],
)
def test_record_predictions_flags_invalid_output(
    tmp_path: Path, values: list[float], counter: Counter
) -> None:
    shm = shared_memory.SharedMemory.open(tmp_path, GEOMETRY)
    addr = shm.slot_address(0, 0)
    assert recording.record_predictions(addr, np.array(values, dtype=np.float32)) == counter
    mine = shm.slabs["slots"][0, 0]
    assert mine["counters"][counter] == 1
    assert mine["counters"][Counter.CANDIDATES] == 0
    assert mine["pred_hist"].sum() == 0


def test_control_word_roundtrip() -> None:
    word = control.pack(300, 1, True, 41)
    assert control.unpack(word) == (300, 1, True, 41)
    with pytest.raises(ValueError):
        control.pack(10_001, 0, True, 0)


def test_open_refuses_mismatched_layout(tmp_path: Path) -> None:
    shared_memory.SharedMemory.open(tmp_path, GEOMETRY).close()
    with pytest.raises(shared_memory.LayoutMismatch, match="segment cells"):
        shared_memory.SharedMemory.open(tmp_path, shared_memory.Geometry(3, 32, 100))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / shared_memory.STATE_FILE).write_bytes(b"\0" * 8192)
    with pytest.raises(shared_memory.LayoutMismatch, match="not a Rampart state file"):
        shared_memory.SharedMemory.attach(tmp_path / "other")


def test_state_file_survives_reattach(tmp_path: Path) -> None:
    shm = shared_memory.SharedMemory.open(tmp_path, GEOMETRY)
    recording.record_request(shm.slot_address(0, 0), 10, 0, 0)
    shm.write_control(control.pack(1000, 0, True, 3))
    again = shared_memory.SharedMemory.attach(tmp_path)
    assert again.slabs["slots"][0, 0]["counters"][Counter.REQUESTS] == 1
    assert control.unpack(again.control_word())[0] == 1000


def test_slab_lock_exclusive_and_freed_by_death(tmp_path: Path) -> None:
    first = shared_memory.SlabLock(tmp_path, 3)
    second = shared_memory.SlabLock(tmp_path, 3)
    assert {first.index, second.index} == {0, 1}
    # Another process takes the last slab and dies without releasing it.
    code = (
        "import os, sys; from pathlib import Path; from router import shared_memory;"
        f"lock = shared_memory.SlabLock(Path({str(tmp_path)!r}), 3); os._exit(10 + lock.index)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 12
    third = shared_memory.SlabLock(tmp_path, 3)
    assert third.index == 2
    with pytest.raises(RuntimeError, match="all 3 worker slabs"):
        shared_memory.SlabLock(tmp_path, 3)
