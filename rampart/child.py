"""A function run in a fresh Python process, with `multiprocessing.Process`'s few methods.

The evaluator runs in its own interpreter (as with multiprocessing's "spawn") but is
started with `subprocess`: a spawn context also starts multiprocessing's resource
tracker, a third Python process (~7 MB) that Rampart has no use for (it keeps its state
in mmap'd files, not `multiprocessing.shared_memory`). The parent names the function by
module and name, so it never imports the evaluator's code itself; the call's arguments
travel pickled on the child's stdin.

    child = Child("guardrails.process", "run", (config,), {"parent": os.getpid()})
    child.start()
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import subprocess
import sys
from typing import Any


class Child:
    def __init__(
        self,
        module: str,
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.call = (module, function, args, kwargs or {})
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "rampart.child"],
            stdin=subprocess.PIPE,
            close_fds=True,
            # A copy taken here: the exec never reads the process's `environ`, which another
            # thread's setenv may be reallocating at that moment.
            env=dict(os.environ),
        )
        assert self._popen.stdin is not None
        try:
            self._popen.stdin.write(pickle.dumps(self.call))
        except BrokenPipeError:  # it died at once; exitcode says how
            pass
        finally:
            self._popen.stdin.close()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def exitcode(self) -> int | None:
        """None while it runs; minus the signal's number if a signal ended it."""
        return self._popen.poll() if self._popen else None

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)

    def terminate(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.kill()


def main() -> None:
    module, function, args, kwargs = pickle.load(sys.stdin.buffer)
    # Nothing more comes on stdin: the child reads /dev/null from now on, as a spawned one.
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    getattr(importlib.import_module(module), function)(*args, **kwargs)


if __name__ == "__main__":
    main()
