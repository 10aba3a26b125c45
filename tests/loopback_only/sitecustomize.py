"""Imported at start by a Python the tests run with this folder on PYTHONPATH (app_runner.demo_app's `python app.py`):
with LOOPBACK_ONLY_RECORDER set to a RecordingServer's URL, a connection to any address beyond loopback is refused
before a packet leaves, and reported to the recorder as the request line "GET /connect/HOST/PORT HTTP/1.0".

So a test sees every connection the process attempts, by its effect, whichever client made it: an HTTP(S)_PROXY in
the environment reaches only the clients that honour it, and Gradio's download guard fetches through a transport
pinned to the address it checked, which does not.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys

RECORDER = os.environ.get("LOOPBACK_ONLY_RECORDER")  # http://127.0.0.1:PORT


def _beyond_loopback(sock: socket.socket, address) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # a Unix socket
    host = str(address[0]).split("%", 1)[0]  # an IPv6 scope id is not part of the address
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:  # a name: connect() would resolve it in the socket's family
        addresses = [ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None, sock.family)]
    return not all(ip.is_loopback for ip in addresses)


if RECORDER:
    _connect = socket.socket.connect
    _recorder = RECORDER.removeprefix("http://").rsplit(":", 1)
    # uvicorn would run the app on uvloop if it could import it, whose sockets connect in C, past this module.
    sys.modules["uvloop"] = None

    def _report(address) -> None:
        """Tell the recorder, and wait for its answer, so the attempt is recorded before the caller hears of it."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            _connect(sock, (_recorder[0], int(_recorder[1])))
            sock.sendall(f"GET /connect/{address[0]}/{address[1]} HTTP/1.0\r\n\r\n".encode())
            while sock.recv(4096):
                pass

    def connect(self: socket.socket, address) -> None:
        if _beyond_loopback(self, address):
            _report(address)
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address[0]} is beyond loopback: refused by the tests")
        return _connect(self, address)

    def connect_ex(self: socket.socket, address) -> int:
        try:
            connect(self, address)
        except OSError as exc:
            return exc.errno or errno.ECONNREFUSED
        return 0

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
