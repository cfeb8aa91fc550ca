"""Evaluators forked from a process that already holds numba, so the pages are shared.

numba costs every process that runs a kernel ~55 MB (its import, typing and target
context), and the worker and the evaluator each paid it: a sidecar beside every pod pays
that hundreds of times. Pages a forked child has not written stay shared with its parent
(PSS counts each 1/k in each of the k processes that map it), so `rampart serve` loads
the evaluator's kernels once, then forks a zygote: a single-threaded process that forks
each evaluator on request, the first one and every restart, all sharing the kernels with
the worker.

The zygote is forked before `rampart serve` starts any thread (a lock held by another
thread at a fork stays held forever in the child; SQLite's and uvloop's among them) and
stays single-threaded, so forking from it is safe at any time. It dies with `rampart
serve` (router.lifeline) and its evaluators die with it, so none outlives the server.

Protocol on a socket pair: the server sends (module, function, args, kwargs) pickled,
length-prefixed; the zygote answers `S pid` once the child is forked and `E pid code`
when it has reaped it (`code` as Popen's returncode: minus the signal that ended it).
`ForkedChild` gives the supervisor the same few methods as `rampart.child.Child`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any

from router import lifeline, residency

_LENGTH = struct.Struct("<I")
_REPLY = struct.Struct("<cii")  # kind (S started, E exited), pid, exit code
SPAWN_WAIT_S = 30.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class ZygoteGone(RuntimeError):
    """The zygote died or does not answer: start children another way."""


class Zygote:
    """The server's end: start children in the zygote and learn when they exit."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._cond = threading.Condition()
        self._started: list[int] = []
        self._exits: dict[int, int] = {}
        self._gone = False
        self._spawn_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="rampart-zygote", daemon=True)
        self._reader.start()

    @classmethod
    def fork(cls, close: list[int] | tuple[int, ...] = ()) -> Zygote | None:
        """Fork the zygote from this process, which must run one thread only (else None:
        the caller starts children the usual way). `close`: descriptors the zygote and its
        children must not hold (the listening sockets, the state directory's lock)."""
        if threading.active_count() != 1 or not hasattr(os, "fork"):
            return None
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        gc.collect()
        gc.freeze()  # the collector would otherwise touch, and so copy, every shared object
        serve = os.getpid()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                ours.close()
                for fd in close:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                code = _zygote(theirs, serve)
            finally:
                os._exit(code)
        gc.unfreeze()
        theirs.close()
        return cls(pid, ours)

    @property
    def alive(self) -> bool:
        return not self._gone

    def spawn(self, call: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> int:
        """Fork a child that runs `call`; its pid."""
        data = pickle.dumps(call)
        with self._spawn_lock:
            try:
                self._sock.sendall(_LENGTH.pack(len(data)) + data)
            except OSError as e:
                raise ZygoteGone(f"the zygote is gone: {e}") from None
            with self._cond:
                if not self._cond.wait_for(lambda: self._started or self._gone, SPAWN_WAIT_S):
                    raise ZygoteGone(f"the zygote did not fork in {SPAWN_WAIT_S:g} s")
                if not self._started:
                    raise ZygoteGone("the zygote is gone")
                return self._started.pop(0)

    def exitcode(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float | None) -> None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._gone, timeout)

    def close(self) -> None:
        """Stop the zygote (its children get SIGKILL from the kernel: stop them first)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= _REPLY.size:
                kind, pid, code = _REPLY.unpack_from(buffer)
                buffer = buffer[_REPLY.size :]
                with self._cond:
                    if kind == b"S":
                        self._started.append(pid)
                    else:
                        self._exits[pid] = code
                    self._cond.notify_all()
        with self._cond:
            self._gone = True
            self._cond.notify_all()


class ForkedChild:
    """A child the zygote forks, with `rampart.child.Child`'s methods."""

    def __init__(
        self,
        zygote: Zygote,
        module: str,
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.zygote = zygote
        self.call = (module, function, args, kwargs or {})
        self.pid: int | None = None

    def start(self) -> None:
        self.pid = self.zygote.spawn(self.call)

    @property
    def exitcode(self) -> int | None:
        if self.pid is None:
            return None
        code = self.zygote.exitcode(self.pid)
        if code is None and not self.zygote.alive:
            return -signal.SIGKILL  # its zygote died, and the kernel killed it with it
        return code

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.pid is not None:
            self.zygote.wait(self.pid, timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is not None and self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


# -- the zygote process ---------------------------------------------------------------------------
def _zygote(sock: socket.socket, serve: int) -> int:
    lifeline.die_with_parent(serve)
    zygote = os.getpid()  # the children's parent, named before they are forked
    # LLVM's code, paged in to load the kernels: the zygote never runs numba, and a page
    # the worker and the evaluators drop (router.residency) but the zygote kept mapped
    # would count whole here. A child that needs one pages it back from the file.
    residency.release_compiler(force=True)
    # ^C, or a SIGTERM to the whole process group (a container runtime's stop): `rampart
    # serve` stops the evaluator gracefully, and the zygote, whose death would SIGKILL it,
    # leaves that to it; it ends when the server closes its socket, or dies with it. Blocked,
    # not ignored: a child inherits the mask, and one signalled before it has set its own
    # handlers gets the signal once it unblocks it, where an ignored one would be lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: set[int] = set()
    buffer = b""
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
        if sock.fileno() in ready:
            chunk = sock.recv(65536)
            if not chunk:  # the server closed its end: stop with it
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                return 0
            buffer += chunk
            while len(buffer) >= _LENGTH.size:
                (n,) = _LENGTH.unpack_from(buffer)
                if len(buffer) < _LENGTH.size + n:
                    break
                call = pickle.loads(buffer[_LENGTH.size : _LENGTH.size + n])
                buffer = buffer[_LENGTH.size + n :]
                pid = os.fork()
                if pid == 0:
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(sock, call, zygote)  # never returns
                children.add(pid)
                sock.sendall(_REPLY.pack(b"S", pid, 0))
        for pid, code in _reaped():
            children.discard(pid)
            sock.sendall(_REPLY.pack(b"E", pid, code))


def _reaped() -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(status)))


def _child(
    sock: socket.socket, call: tuple[str, str, tuple[Any, ...], dict[str, Any]], zygote: int
) -> None:
    """In the forked child: run `call` as a fresh process would, then exit."""
    # Not inherited from the zygote: set again. Its pid from before the fork, not
    # getppid(): a zygote that died before this line leaves a getppid() of the reaper,
    # which would "match" and leave this child running with no one to stop it.
    lifeline.die_with_parent(zygote)
    sock.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    module, function, args, kwargs = call
    code = 0
    try:
        getattr(importlib.import_module(module), function)(*args, **kwargs)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)
