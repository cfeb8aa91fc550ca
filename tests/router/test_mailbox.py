"""The admin mailbox: workers submit rollout commands, the evaluator answers them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.mailbox import AdminMailbox, Command


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[AdminMailbox]:
    m = AdminMailbox(tmp_path)
    yield m
    m.close()


def test_mailbox_commands_are_the_admin_endpoints() -> None:
    assert [c.value for c in Command] == ["start", "pause", "resume", "rollback", "promote"]


def test_mailbox_pending_lists_submitted_commands_in_order(mailbox: AdminMailbox) -> None:
    first = mailbox.submit(Command.START, {"version": "2"})
    second = mailbox.submit(Command.PAUSE, {})
    assert second > first
    assert mailbox.pending() == [(first, Command.START, {"version": "2"}), (second, "pause", {})]
    assert all(type(kind) is Command for _, kind, _ in mailbox.pending())


def test_mailbox_result_is_none_until_finished(mailbox: AdminMailbox) -> None:
    command = mailbox.submit(Command.ROLLBACK, {})
    assert mailbox.result(command) is None
    mailbox.finish(command, {"ok": True, "state": "rolled_back"})
    assert mailbox.result(command) == {"ok": True, "state": "rolled_back"}


def test_mailbox_finish_takes_a_command_off_pending(mailbox: AdminMailbox) -> None:
    done = mailbox.submit(Command.START, {"version": "2"})
    waiting = mailbox.submit(Command.PROMOTE, {})
    mailbox.finish(done, {"ok": False, "error": "no_candidate"})
    assert [command for command, _, _ in mailbox.pending()] == [waiting]


def test_mailbox_result_of_an_unknown_command_is_none(mailbox: AdminMailbox) -> None:
    assert mailbox.result(12345) is None


def test_mailbox_connects_worker_and_evaluator_processes_through_the_state_dir(
    tmp_path: Path,
) -> None:
    worker, evaluator = AdminMailbox(tmp_path), AdminMailbox(tmp_path)
    try:
        command = worker.submit(Command.START, {"version": "3"})
        [(seen, kind, payload)] = evaluator.pending()
        assert (seen, kind, payload) == (command, Command.START, {"version": "3"})
        evaluator.finish(seen, {"ok": True, "rollout": "r1"})
        assert worker.result(command) == {"ok": True, "rollout": "r1"}
    finally:
        worker.close()
        evaluator.close()


def test_mailbox_submit_from_several_threads_keeps_every_command(mailbox: AdminMailbox) -> None:
    # Workers call it off the event loop, from a thread pool: one shared connection.
    ids: list[int] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        for i in range(20):
            command = mailbox.submit(Command.PAUSE, {"thread": n, "i": i})
            with lock:
                ids.append(command)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 80
    assert sorted(ids) == [command for command, _, _ in mailbox.pending()]
