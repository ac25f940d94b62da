"""The machine: the tools and builds a run needs, its limits, and the facts recorded with the results."""

import os
import platform
import resource
import shutil
import socket
import subprocess
import sys

from .common import HOST, ROOT, log


def ensure_tools():
    need = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client",
            "taskset": "util-linux"}
    missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if missing:
        log("installing", *missing)
        pre = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(pre + ["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(pre + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                       check=True, env=env, timeout=900)
    # Debian starts the packaged services; stop them so they take no CPU (best effort).
    for svc in ("nginx", "haproxy"):
        subprocess.run(["sh", "-c", f"service {svc} stop >/dev/null 2>&1 || true"], timeout=30)


def build():
    log("cargo build --profile dist -p tern -p tern-bench")
    subprocess.run(["cargo", "build", "--profile", "dist", "-q", "-p", "tern", "-p", "tern-bench"],
                   cwd=ROOT, check=True, timeout=1800)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def require_localhost_ipv4():
    addrs = {a[4][0] for a in socket.getaddrinfo(HOST, 80, proto=socket.IPPROTO_TCP)}
    if addrs != {"127.0.0.1"}:
        sys.exit(f"{HOST} must resolve to 127.0.0.1 only (got {addrs}); wrk would otherwise try ::1")


def machine_info():
    def first(cmd):
        try:
            r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"
    cpu = first("lscpu | grep 'Model name' | sed 's/.*: *//'")
    mem = first("free -g | awk '/Mem:/ {print $2\" GiB\"}'")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "crates"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        rev, dirty = "?", ""
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "os": first("grep PRETTY_NAME /etc/os-release | cut -d'\"' -f2"),
        "tern": f"{rev}{' (with uncommitted changes)' if dirty else ''}",
        "rustc": first("rustc -V"), "nginx": first("nginx -v"), "haproxy": first("haproxy -v"),
        "wrk": first("wrk -v"), "h2load": first("h2load --version"), "openssl": first("openssl version"),
        "python": platform.python_version(),
    }
