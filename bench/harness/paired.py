"""Two targets loaded at once on the same core: scenario 7, the head-to-head runs and --baseline."""

import json
import os
import re
import subprocess
import time

from .common import COMMANDS, HOST, LOAD_CPU, PORTS, RESULTS, fmt, log, record
from .environment import machine_info
from .servers import sched_cpu_s
from .summary import block_ratio


def paired_runs(cfg, servers, a, b, scheme, blocks, label):
    """Targets `a` and `b` loaded at the same time, 32 wrk connections each, both on the
    server core, so that the machine's drift and noise hit both alike; each run gives
    the ratio of their CPU per request (a over b).

    The runs come in blocks, and both processes are restarted before each block,
    alternately in one order and the other. A restart moves each process's code
    and heap (address-space randomisation), which shifts the ratio by up to ±1.5%
    for the process's whole life, more than the runs within one life differ; so
    the estimate is taken over many lives: the geometric mean of the blocks'
    medians (see `block_ratio`)."""
    secs = 2 if cfg.quick else 5
    # "https-close" is scenario 3's traffic: a new TLS connection for every request.
    proto = "https" if scheme == "https-close" else scheme
    extra = ["-H", "Connection: close"] if scheme == "https-close" else []
    out = []
    for block in range(blocks):
        order = (a, b) if block % 2 == 0 else (b, a)
        for name in order:
            servers[name].restart()
        time.sleep(1.0)
        for r in range(cfg.pair_rounds):
            pids = {t: servers[t].pids() for t in (a, b)}
            c0 = {t: sched_cpu_s(p) for t, p in pids.items()}
            starts = (a, b) if r % 2 == 0 else (b, a)
            procs = {}
            for t in starts:
                url = f"{proto}://{HOST}:{PORTS[t][proto]}/"
                cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c32", f"-d{secs}s", "--timeout", "5s",
                       *extra, url]
                record(f"{label} {t} (both at once)", " ".join(cmd))
                procs[t] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            res = {}
            for t, pr in procs.items():
                text = pr.communicate(timeout=secs + 30)[0]
                m = re.search(r"(\d+) requests in", text)
                res[t] = int(m.group(1)) if m else 0
            c1 = {t: sched_cpu_s(p) for t, p in pids.items()}
            per = {t: (c1[t] - c0[t]) / res[t] * 1e6 if res[t] else None for t in res}
            out.append({"block": block + 1, "round": r + 1, "requests_a": res[a], "requests_b": res[b],
                        "cpu_us_a": per[a], "cpu_us_b": per[b],
                        "ratio": per[a] / per[b] if per[a] and per[b] else None})
            log(f"{label} {scheme} block {block + 1} round {r + 1}: {a} {fmt(per[a])}us/req "
                f"{b} {fmt(per[b])}us/req ratio {fmt(out[-1]['ratio'], 4)}")
    return out


def scenario_watchdog_pair(cfg, servers):
    """Scenario 7: tern (watchdog on) against tern-nowd, both loaded at once."""
    runs = {}
    for scheme in ("http", "https", "https-close"):
        rows = paired_runs(cfg, servers, "tern", "tern-nowd", scheme, cfg.pair_blocks, "s7")
        runs[scheme] = [{"block": r["block"], "round": r["round"], "requests_on": r["requests_a"],
                         "requests_off": r["requests_b"], "cpu_us_on": r["cpu_us_a"],
                         "cpu_us_off": r["cpu_us_b"], "ratio": r["ratio"]} for r in rows]
    return runs


def scenario_head_to_head(cfg, servers, schemes):
    """Scenarios 1 and 2 head to head: nginx and HAProxy each loaded at the same time
    as Tern. On this VM alternating runs differ by up to ±15% between identical runs,
    more than the proxies differ; loaded at once, they see the same machine."""
    runs = {}
    for other in ("nginx", "haproxy"):
        for scheme in schemes:
            runs[f"{other} {scheme}"] = paired_runs(cfg, servers, other, "tern", scheme,
                                                    cfg.h2h_blocks, "head-to-head")
    # And, for scenario 1, without the forwarding work (see FORWARDING in configs.py): what the
    # headers and request ids cost them.
    if "http" in schemes:
        for other in ("nginx-bare", "haproxy-bare"):
            runs[f"{other} http"] = paired_runs(cfg, servers, other, "tern", "http",
                                                cfg.h2h_blocks, "head-to-head")
    return runs


def baseline_run(cfg, servers, started, t0):
    """The current build (tern) over an earlier one (tern-base): CPU per request, paired."""
    runs = {scheme: paired_runs(cfg, servers, "tern", "tern-base", scheme, cfg.pair_blocks, "baseline")
            for scheme in ("http", "https", "https-close")}
    summary = {scheme: block_ratio(rows) for scheme, rows in runs.items()}
    path = os.path.join(RESULTS, "baseline.json")
    with open(path, "w") as f:
        json.dump({"started": started, "elapsed_s": time.time() - t0, "baseline": cfg.baseline,
                   "machine": machine_info(), "summary": summary, "runs": runs,
                   "commands": COMMANDS}, f, indent=1)
    for scheme, s in summary.items():
        log(f"CPU per request, this build over {cfg.baseline}: {scheme} {fmt(s['ratio'], 4)} "
            f"± {fmt(s['ratio_se'], 4)} (blocks {', '.join(fmt(m, 4) for m in s['block_medians'])})")
    log("wrote", path)
