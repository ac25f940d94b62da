"""The load generators (wrk, h2load, openssl s_time): running them and reading their output."""

import os
import re

from .common import LOAD_CPU, on_cpu, sh


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)$", s.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def run_wrk(url, conns, secs, extra=()):
    cmd = on_cpu(LOAD_CPU) + ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency",
           "--timeout", "5s"] + list(extra) + [url]
    out = sh(cmd, timeout=secs + 30).stdout
    res = {"cmd": " ".join(cmd)}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+\w+)", out)
        res[f"p{pct}_ms"] = parse_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def run_h2load(url, conns, streams, secs, work):
    logf = os.path.join(work, "h2load.log")
    if os.path.exists(logf):
        os.unlink(logf)
    cmd = on_cpu(LOAD_CPU) + ["h2load", "-t1", f"-c{conns}", f"-m{streams}", "-D", str(secs),
           "--log-file", logf, url]
    out = sh(cmd, timeout=secs + 30).stdout
    res = {"cmd": " ".join(cmd)}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        res["requests"] = int(m.group(4))
        res["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    else:
        res["requests"], res["errors"] = 0, -1
    # --log-file: one line per request, "start(us) status duration(us)"; h2load itself
    # prints only min/max/mean/sd, so the percentiles come from this log.
    lat = []
    try:
        with open(logf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "200":
                    lat.append(int(parts[2]) / 1000.0)
    except OSError:
        pass
    lat.sort()
    res["p50_ms"] = percentile(lat, 50)
    res["p99_ms"] = percentile(lat, 99)
    res["non2xx"] = 0
    return res


def run_s_time(port, secs):
    """Full TLS handshakes one after another, never resumed (`openssl s_time -new`), no
    request: the handshake's own cost."""
    cmd = on_cpu(LOAD_CPU) + ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
           "-time", str(secs)]
    out = sh(cmd, timeout=secs + 30, check=False).stdout
    res = {"cmd": " ".join(cmd)}
    m = re.search(r"(\d+) connections in (\d+) real seconds", out)
    done = int(m.group(1)) if m else 0
    real = int(m.group(2)) if m else 0
    res["requests"] = done
    res["rps"] = done / real if real else 0.0
    res["p50_ms"] = res["p99_ms"] = None
    res["errors"] = out.count("ERROR")
    res["non2xx"] = 0
    return res
