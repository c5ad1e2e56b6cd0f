"""The private engine's helper says a process is gone only when all of it is gone: a killed dockerd
(Go, many threads) can show its first thread as a zombie while its other threads still hold the
API socket open, and a connection made then is reset rather than refused."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.helpers.private_engine import alive, proc_state

# a process whose first thread exits while a second one keeps a listening socket open
HALF_EXITED = """
import ctypes, socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
threading.Thread(target=sys.stdin.read).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_first_thread_exited_is_alive_until_its_last_thread_is_gone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HALF_EXITED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while proc_state(proc.pid) != "Z":
            assert time.monotonic() < deadline, "the first thread did not exit"
            time.sleep(0.01)
        # Given its first thread a zombie, its second still holding the socket
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # Then it is alive
        assert alive(proc.pid)
        # When the last thread ends, Then it is gone (a zombie not reaped yet included)
        proc.stdin.close()
        deadline = time.monotonic() + 10
        while alive(proc.pid):
            assert time.monotonic() < deadline, "still alive after its last thread ended"
            time.sleep(0.01)
        assert proc_state(proc.pid) == "Z"  # not reaped yet: the zombie alone is not the process
    finally:
        proc.kill()
        proc.wait()
