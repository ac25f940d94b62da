"""Runs each target in turn, round after round, reading the CPU of its processes
around every run."""

from .common import fmt, log
from .servers import cpu_seconds


def measured(server, fn):
    pids = server.pids()
    c0, s0 = cpu_seconds(pids), cpu_seconds(pids, (12,))
    res = fn()
    res["proxy_cpu_s"] = cpu_seconds(pids) - c0
    res["proxy_sys_s"] = cpu_seconds(pids, (12,)) - s0
    if res.get("requests"):
        res["cpu_us_per_req"] = res["proxy_cpu_s"] / res["requests"] * 1e6
    return res


def alternate(name, targets, rounds, fn, servers, warmup):
    """Runs fn(target) for each target in turn, `rounds` times (A B C A B C ...)."""
    runs = {t: [] for t in targets}
    if warmup:
        for t in targets:
            fn(t, warmup)
    for r in range(rounds):
        for t in targets:
            res = measured(servers[t], lambda: fn(t, None))
            res["round"] = r + 1
            runs[t].append(res)
            log(f"{name} round {r + 1} {t:10s} rps={res.get('rps', 0):10.0f} "
                f"p50={fmt(res.get('p50_ms'))}ms p99={fmt(res.get('p99_ms'))}ms "
                f"cpu/req={fmt(res.get('cpu_us_per_req'))}us err={res.get('errors')}")
    return runs
