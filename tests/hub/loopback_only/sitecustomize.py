"""Loaded by every child process of the hub tests (PYTHONPATH): no socket may reach a non-loopback host.

A connection to anything but 127.0.0.0/8, ::1 or a Unix socket raises ConnectionRefusedError naming
the address, so a hub path that escaped HF_ENDPOINT fails loudly instead of reaching the internet.
"""

import ipaddress
import socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(address: object) -> None:
    if not isinstance(address, tuple):
        return  # AF_UNIX
    host = str(address[0])
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise ConnectionRefusedError(f"saekit hub tests: connection to non-loopback address {address!r} refused")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(address)
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
