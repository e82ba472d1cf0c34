"""Watchdog process of a multi-worker training process (run as a script, not imported).

    python keras_seg/_watchdog.py PID

A thread cannot be the watchdog: while TensorFlow connects to the cluster it holds the GIL,
so no Python thread runs, and it catches SIGTERM. This process reads lines
``<seconds> <message>`` from its stdin, each (re)starting the countdown; when a countdown
runs out it prints the message to stderr and SIGKILLs process PID. It ends with its stdin,
that is, when PID ends or closes the pipe.
"""

import os
import select
import signal
import sys
import time


def main(pid: int) -> None:
    deadline, message, pending = None, "", b""
    fd = sys.stdin.fileno()
    while True:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                seconds, _, message = line.decode("utf-8", "replace").partition(" ")
                deadline = time.monotonic() + float(seconds)
        elif deadline is not None and time.monotonic() >= deadline:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


if __name__ == "__main__":
    main(int(sys.argv[1]))
