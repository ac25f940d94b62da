"""The scenarios: each target loaded in turn, rounds alternating, and Tern's flamegraphs."""

import json
import os
import re
import subprocess
import time
import urllib.request

from .alternate import alternate
from .clients import run_h2load, run_s_time, run_wrk
from .common import BENCH, HELPER, HOST, LOAD_CPU, PORTS, ROOT, fmt, load_pin_text, log, record
from .limit import scenario_near_limit
from .paired import scenario_head_to_head, scenario_watchdog_pair
from .servers import cpu_seconds, rss_kib


def run_scenarios(cfg, servers, work, wanted):
    """The raw runs of the scenarios numbered in `wanted`, by scenario ("s1" …, "h2h")."""
    results = {}
    ka = ["direct", "tern", "tern-nowd", "nginx", "haproxy"]
    if 1 in wanted:
        results["s1"] = scenario_keepalive(cfg, servers, "http", ka)
    if 2 in wanted:
        results["s2"] = scenario_keepalive(cfg, servers, "https", ka)
    if 3 in wanted:
        results["s3"] = scenario_handshakes(cfg, servers, ka)
    if 4 in wanted:
        results["s4"] = scenario_h2(cfg, servers, work, ["direct", "tern", "nginx", "haproxy"])
    if 5 in wanted:
        results["s5"] = scenario_idle(cfg, servers, work, ["direct", "tern", "nginx", "haproxy"])
    if 6 in wanted:
        results["s6"] = scenario_storm(cfg, servers, work, ["tern", "nginx", "haproxy"])
    if 7 in wanted:
        results["s7"] = scenario_watchdog_pair(cfg, servers)
    if 8 in wanted:
        results["s8"] = scenario_full_handshakes(cfg, servers, ["direct", "tern", "nginx", "haproxy"])
    if 9 in wanted:
        results["s9"] = scenario_near_limit(cfg, servers)
    h2h_schemes = [sc for n, sc in ((1, "http"), (2, "https"), (3, "https-close")) if n in wanted]
    if h2h_schemes and not cfg.quick and not cfg.no_head_to_head:
        results["h2h"] = scenario_head_to_head(cfg, servers, h2h_schemes)
    if not cfg.quick and not cfg.no_profile:
        if 1 in wanted:
            profile(servers, "http", 10, os.path.join(BENCH, "profile-s1.svg"))
        if 2 in wanted:
            profile(servers, "https", 10, os.path.join(BENCH, "profile-s2.svg"))
    return results


def scenario_keepalive(cfg, servers, scheme, targets):
    conns, secs = 64, cfg.secs

    def fn(t, warm):
        url = f"{scheme}://{HOST}:{PORTS[t][scheme]}/"
        record(f"s{1 if scheme == 'http' else 2} {t}", f"{load_pin_text()}wrk -t1 -c{conns} -d{secs}s "
               f"--latency --timeout 5s {url}")
        return run_wrk(url, conns, warm or secs)
    return alternate(f"s{1 if scheme == 'http' else 2}", targets, cfg.rounds, fn, servers, cfg.warmup)


def scenario_handshakes(cfg, servers, targets):
    conns, secs = 32, cfg.secs

    def fn(t, warm):
        url = f"https://{HOST}:{PORTS[t]['https']}/"
        record(f"s3 {t}", f"{load_pin_text()}wrk -t1 -c{conns} -d{secs}s --latency --timeout 5s "
               f"-H 'Connection: close' {url}")
        return with_handshake_counts(
            t, lambda: run_wrk(url, conns, warm or secs, extra=["-H", "Connection: close"]))
    return alternate("s3", targets, cfg.rounds, fn, servers, cfg.warmup)


def tern_handshakes(name):
    """Tern's count of full and resumed TLS handshakes (tern_tls_handshakes_total)."""
    counts = {"full": 0, "resumed": 0}
    if name not in ("tern", "tern-nowd", "tern-pc"):
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORTS[name]['admin']}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for kind in counts:
        m = re.search(rf'^tern_tls_handshakes_total{{kind="{kind}"}} (\d+)', text, re.M)
        counts[kind] = int(m.group(1)) if m else 0
    return counts


def with_handshake_counts(name, fn):
    """Runs fn(); for Tern, adds how many of the handshakes it served were full and resumed."""
    before = tern_handshakes(name)
    res = fn()
    after = tern_handshakes(name)
    if before is not None and after is not None:
        res["full_handshakes"] = after["full"] - before["full"]
        res["resumed_handshakes"] = after["resumed"] - before["resumed"]
    return res


def scenario_full_handshakes(cfg, servers, targets):
    secs = cfg.secs

    def fn(t, warm):
        port = PORTS[t]["https"]
        record(f"s8 {t}", f"{load_pin_text()}openssl s_time -connect 127.0.0.1:{port} -new -time {secs}")
        return with_handshake_counts(t, lambda: run_s_time(port, warm or secs))
    return alternate("s8", targets, cfg.rounds, fn, servers, cfg.warmup)


def scenario_h2(cfg, servers, work, targets):
    conns, streams, secs = 16, 10, cfg.secs

    def fn(t, warm):
        url = f"https://{HOST}:{PORTS[t]['https']}/"
        record(f"s4 {t}", f"{load_pin_text()}h2load -t1 -c{conns} -m{streams} -D {secs} "
               f"--log-file LOG {url}")
        return run_h2load(url, conns, streams, warm or secs, work)
    return alternate("s4", targets, cfg.rounds, fn, servers, cfg.warmup)


def scenario_idle(cfg, servers, work, targets):
    count = cfg.idle_conns
    ca = os.path.join(work, "certs", "ca.pem")
    runs = {t: [] for t in targets}
    for r in range(cfg.rounds):
        for t in targets:
            srv = servers[t]
            # A fresh process each time: allocators keep freed memory, so a second
            # measurement in the same process would see the first one's heap reused.
            srv.restart()
            time.sleep(1.0)
            before = rss_kib(srv.pids())
            cmd = ["taskset", "-c", LOAD_CPU, HELPER, "idle", "--connect", f"127.0.0.1:{PORTS[t]['https']}",
                   "--sni", HOST, "--ca", ca, "--count", str(count), "--hold-secs", "60"]
            record(f"s5 {t}", " ".join(cmd))
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
            line = ""
            try:
                line = p.stdout.readline()  # "ready ok=N failed=M", bounded by the helper's timeouts
                time.sleep(1.0)
                after = rss_kib(srv.pids())
            finally:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            m = re.search(r"ok=(\d+) failed=(\d+)", line)
            ok = int(m.group(1)) if m else 0
            res = {"round": r + 1, "conns": ok, "failed": int(m.group(2)) if m else count,
                   "rss_before_kib": before, "rss_after_kib": after,
                   "kib_per_conn": (after - before) / ok if ok else None, "cmd": " ".join(cmd)}
            runs[t].append(res)
            log(f"s5 round {r + 1} {t:10s} conns={ok} rss {before}->{after} KiB "
                f"= {fmt(res['kib_per_conn'])} KiB/conn")
            time.sleep(1.0)  # let the proxy notice the closes
    return runs


def scenario_storm(cfg, servers, work, targets):
    count = cfg.storm_count
    ca = os.path.join(work, "certs", "ca.pem")
    runs = {t: [] for t in targets}
    for r in range(cfg.rounds):
        for t in targets:
            for mode in ("ordinary", "storm"):
                srv = servers[t]
                pids = srv.pids()
                cmd = ["taskset", "-c", LOAD_CPU, HELPER, "storm", "--connect",
                       f"127.0.0.1:{PORTS[t]['https']}", "--sni", HOST, "--ca", ca, "--count", str(count),
                       "--concurrency", "16", "--mode", mode, "--hold-ms", str(cfg.hold_ms)]
                record(f"s6 {t} {mode}", " ".join(cmd))
                c0 = cpu_seconds(pids)
                p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
                try:
                    sent = p.stdout.readline()
                    c1, t1 = cpu_seconds(pids), time.time()
                    summary = p.stdout.readline()
                    c2, t2 = cpu_seconds(pids), time.time()
                    p.wait(timeout=30)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait(timeout=10)
                # one more second after the client has gone
                time.sleep(1.0)
                c3 = cpu_seconds(pids)
                try:
                    info = json.loads(summary)
                except ValueError:
                    info = {"raw": summary}
                m = re.search(r"errors=(\d+)", sent or "")
                errors = int(m.group(1)) if m else count
                done = count - errors
                res = {"round": r + 1, "mode": mode, "requests": done, "errors": errors,
                       "cpu_s": c1 - c0, "cpu_s_per_1000": (c1 - c0) / done * 1000 if done else None,
                       "hold_cpu_pct": (c2 - c1) / max(t2 - t1, 1e-9) * 100,
                       "after_cpu_pct": (c3 - c2) / 1.0 * 100, "client": info, "cmd": " ".join(cmd)}
                runs[t].append(res)
                log(f"s6 round {r + 1} {t:10s} {mode:8s} n={done} err={errors} "
                    f"cpu/1000={fmt(res['cpu_s_per_1000'])}s hold={res['hold_cpu_pct']:.0f}% "
                    f"after={res['after_cpu_pct']:.0f}% closed_by_proxy={info.get('closed_by_proxy')}")
    return runs


def profile(servers, scheme, seconds, out):
    """A flamegraph from Tern's own admin endpoint while wrk drives scenario 1 or 2."""
    url = f"{scheme}://{HOST}:{PORTS['tern'][scheme]}/"
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{seconds + 2}s", url]
    wrk = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        admin = f"http://127.0.0.1:{PORTS['tern']['admin']}/debug/pprof/flamegraph?seconds={seconds}"
        record(f"profile {scheme}", f"{' '.join(cmd)} & curl '{admin}' > {os.path.relpath(out, ROOT)}")
        with urllib.request.urlopen(admin, timeout=seconds + 30) as r:
            data = r.read()
        with open(out, "wb") as f:
            f.write(data)
    finally:
        wrk.wait(timeout=seconds + 30)
    log("profile written to", os.path.relpath(out, ROOT))
