"""Paths, ports, CPU pinning, and the logging and command helpers every module uses."""

import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
RESULTS = os.path.join(BENCH, "results")
TEMPLATES = os.path.join(BENCH, "templates")
TERN = os.path.join(ROOT, "target", "dist", "tern")
HELPER = os.path.join(ROOT, "target", "dist", "tern-bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

LOAD_CPU = "0"   # wrk, h2load, storm and idle clients
SERVER_CPU = "1"  # every proxy and the backend

HOST = "localhost"  # resolves to 127.0.0.1 only on this machine (checked at start)
PORTS = {
    "direct": {"http": 18080, "https": 18443},
    "tern": {"http": 18100, "https": 18101, "admin": 18109},
    "tern-nowd": {"http": 18200, "https": 18201, "admin": 18209},
    # Per-core scheduler, in the unpinned layout (bench/layouts).
    "tern-pc": {"http": 18800, "https": 18801, "admin": 18809},
    # An earlier build of Tern (--baseline), for the cost of a change.
    "tern-base": {"http": 18700, "https": 18701, "admin": 18709},
    "nginx": {"http": 18300, "https": 18301},
    "haproxy": {"http": 18400, "https": 18401},
    # The same two without the forwarding work (FORWARDING in configs.py), for the
    # head-to-head runs only.
    "nginx-bare": {"http": 18500, "https": 18501},
    "haproxy-bare": {"http": 18600, "https": 18601},
    # Scenario 9: nginx answering from a file, and the three proxies in front of it.
    "nginx-static": {"http": 18900, "https": 18901},
    "tern-static": {"http": 18910, "https": 18911, "admin": 18919},
    "nginx-to-static": {"http": 18920, "https": 18921},
    "haproxy-to-static": {"http": 18930, "https": 18931},
}

# The process shape of each server. "pinned" (bench/run): one worker each, every
# server on SERVER_CPU and every client on LOAD_CPU. "unpinned" (bench/layouts):
# nothing pinned, and each server as it runs by default: Tern a worker per CPU,
# nginx `worker_processes auto`, HAProxy its default threads.
LAYOUT = {"name": "pinned"}


def pinned():
    return LAYOUT["name"] == "pinned"


def on_cpu(cpu):
    """The command prefix that pins a process to `cpu` in the pinned layout."""
    return ["taskset", "-c", cpu] if pinned() else []


def load_pin_text():
    """How the clients' pinning reads in a recorded command line."""
    return f"taskset -c {LOAD_CPU} " if pinned() else ""


COMMANDS = []  # (label, command line) as run, for the report


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def sh(cmd, timeout=60, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True,
                          timeout=timeout, check=check, **kw)


def record(label, cmd):
    line = cmd if isinstance(cmd, str) else " ".join(cmd)
    if (label, line) not in COMMANDS:
        COMMANDS.append((label, line))


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{nd}g}" if abs(v) < 1 else f"{v:.{nd}g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
