"""Scenario 9, near the limit: each proxy's CPU per request against what its backend
spends answering the same request alone."""

from .alternate import alternate
from .clients import run_wrk
from .common import HOST, PORTS, fmt, load_pin_text, record
from .servers import STATIC_FILE, STATIC_TARGETS, cpu_seconds

PATH = "/" + STATIC_FILE
BACKEND = "nginx-static"
PROXIES = {"tern-static": "Tern", "nginx-to-static": "nginx", "haproxy-to-static": "HAProxy"}
# The target: a proxy's CPU per request at most this many times the backend's.
LIMIT = 1.6


def scenario_near_limit(cfg, servers):
    """Keep-alive GETs of a small file, 64 connections, straight to nginx and through
    each proxy, alternating; each run reads the CPU of the target and of the backend."""
    conns = 64
    backend = servers[BACKEND]

    def fn(t, warm):
        url = f"http://{HOST}:{PORTS[t]['http']}{PATH}"
        record(f"s9 {t}", f"{load_pin_text()}wrk -t1 -c{conns} -d{cfg.secs}s --latency --timeout 5s {url}")
        theirs = backend.pids()
        b0 = cpu_seconds(theirs)
        res = run_wrk(url, conns, warm or cfg.secs)
        if res.get("requests"):
            res["backend_cpu_us_per_req"] = (cpu_seconds(theirs) - b0) / res["requests"] * 1e6
        return res
    return alternate("s9", list(STATIC_TARGETS), cfg.rounds, fn, servers, cfg.warmup)


def limit_ratio(s9, proxy="tern-static"):
    """A proxy's CPU per request over the backend's alone, or None."""
    me, alone = s9.get(proxy, {}), s9.get(BACKEND, {})
    if me.get("cpu_us_per_req") and alone.get("cpu_us_per_req"):
        return me["cpu_us_per_req"] / alone["cpu_us_per_req"]
    return None


def kernel_us(m):
    if m.get("sys_share") is None or m.get("cpu_us_per_req") is None:
        return None
    return m["sys_share"] * m["cpu_us_per_req"]


def near_limit_lines(summary, s1=None):
    """The scenario's table: the backend alone, then each proxy in front of it."""
    s9 = summary.get("s9")
    if not s9 or BACKEND not in s9:
        return []
    alone = s9[BACKEND]
    L = ["### 9. Near the limit: each proxy against its backend alone\n",
         f"Keep-alive GETs of a 34-byte file, 64 connections: nginx (`open_file_cache` on, no access log) "
         f"answers them from the file, alone and then behind each proxy, alternating. The target is a "
         f"proxy's CPU per request at most {LIMIT}× the backend's alone. A proxy makes two receives and "
         "two sends per request where the backend makes one of each, and it shares the CPU with the "
         "backend (pinned: one core for every server). The last row is scenario 1's pair: Tern in front "
         "of `tern-bench backend`.\n",
         "| target | req/s | p99 ms | CPU µs/req | kernel µs/req | backend's CPU µs/req | "
         "÷ backend alone, CPU | ÷ backend alone, kernel |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ak = kernel_us(alone)
    L.append(f"| nginx, a static file, alone | {fmt(alone.get('rps'))} | {fmt(alone.get('p99_ms'))} | "
             f"{fmt(alone.get('cpu_us_per_req'))} | {fmt(ak)} | | | |")
    for t, label in PROXIES.items():
        m = s9.get(t)
        if not m:
            continue
        k = kernel_us(m)
        L.append(f"| {label} in front | {fmt(m.get('rps'))} | {fmt(m.get('p99_ms'))} | "
                 f"{fmt(m.get('cpu_us_per_req'))} | {fmt(k)} | {fmt(m.get('backend_cpu_us_per_req'))} | "
                 f"{fmt(limit_ratio(s9, t), 3)} | {fmt(k / ak if k and ak else None, 3)} |")
    if s1 and s1.get("direct", {}).get("cpu_us_per_req") and s1.get("tern", {}).get("cpu_us_per_req"):
        d, t = s1["direct"], s1["tern"]
        dk, tk = kernel_us(d), kernel_us(t)
        L.append(f"| Tern in front of `tern-bench backend` (scenario 1; backend alone {fmt(d['cpu_us_per_req'])} "
                 f"µs/req) | {fmt(t.get('rps'))} | {fmt(t.get('p99_ms'))} | {fmt(t['cpu_us_per_req'])} | "
                 f"{fmt(tk)} | | {fmt(t['cpu_us_per_req'] / d['cpu_us_per_req'], 3)} | "
                 f"{fmt(tk / dk if tk and dk else None, 3)} |")
    L.append("")
    return L
