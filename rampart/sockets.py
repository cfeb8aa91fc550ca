"""The listening sockets of `rampart serve`, bound before any worker starts.

Binding them here rather than in uvicorn lets one worker process serve two listeners
(the main port and `[serve] admin_listen`), and turns a port already in use into one line
naming the key, exit 2, before the evaluator or a worker starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from router.config import Address, ConfigError

UNIX_SOCKET_MODE = 0o660  # admin is for the owner and its group (the bearer token applies too)


def bind(address: Address, key: str) -> socket.socket:
    """A listening-ready socket bound to `address`, inheritable by uvicorn's workers."""
    if address.path:
        _clear_stale_unix_socket(address.path, key)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.path)
            os.chmod(address.path, UNIX_SOCKET_MODE)
        except OSError as e:
            sock.close()
            raise ConfigError(f"{key}: cannot listen on {address}: {e}") from None
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"{key}: cannot listen on {address}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def bound_address(sock: socket.socket) -> Address:
    """The address `sock` is bound to (the port the kernel chose for port 0)."""
    name = sock.getsockname()
    if isinstance(name, str):
        return Address(path=name)
    return Address(host=str(name[0]), port=int(name[1]))


def _clear_stale_unix_socket(path: str, key: str) -> None:
    """A socket file left by a server that died is removed; one with a listener is not."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{key}: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError:
            return  # let bind() report it
    raise ConfigError(f"{key}: another process listens on unix:{path}")


def remove_unix_socket(address: Address | None) -> None:
    if address is not None and address.path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)
