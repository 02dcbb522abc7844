"""Timing one command for the bench scripts, without the quantization of `subprocess.run`.

`subprocess.run(..., timeout=T)` does not block in waitpid: it polls with sleeps that double
from 0.5 ms up to 50 ms, so a command is seen to end only at one of 0.5, 1.5, 3.5, 7.5, 15.5,
31.5, 63.5 ms, ... then every 50 ms. An 8 ms `hull run` measured 15.5 ms that way, the same as
a 14 ms `runc run`. Here the wait blocks in `wait4` (which also gives the command's own CPU
time, its waited-for children's included), and a timer kills the command if it outlives the
limit.
"""
import os
import subprocess
import threading
import time


def run_timed(cmd, limit=300, check=True, **popen):
    """Runs `cmd` (Popen keyword arguments in `popen`); returns (wall s, cpu s, exit code).
    With `check`, a non-zero exit raises CalledProcessError; past `limit` seconds the command
    is killed and TimeoutError raised."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, **popen)
    killed = threading.Event()

    def kill():
        killed.set()
        p.kill()

    timer = threading.Timer(limit, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if killed.is_set():
        raise TimeoutError(f"{cmd[0]} still running after {limit} s: killed")
    if check and p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, cmd)
    return wall, usage.ru_utime + usage.ru_stime, p.returncode
