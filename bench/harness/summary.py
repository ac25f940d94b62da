"""Medians and ratios over the raw runs: the numbers the report, the plot and baseline.json show."""

import math
import statistics


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(results):
    s = {}
    for sc in ("s1", "s2", "s3", "s4", "s8", "s9"):
        if sc not in results:
            continue
        s[sc] = {}
        for t, runs in results[sc].items():
            s[sc][t] = {k: med([r.get(k) for r in runs])
                        for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "backend_cpu_us_per_req")}
            if any("full_handshakes" in r for r in runs):
                s[sc][t]["full_handshakes"] = sum(r.get("full_handshakes", 0) for r in runs)
                s[sc][t]["resumed_handshakes"] = sum(r.get("resumed_handshakes", 0) for r in runs)
            sys_share = [r["proxy_sys_s"] / r["proxy_cpu_s"] for r in runs
                         if r.get("proxy_sys_s") is not None and r.get("proxy_cpu_s")]
            s[sc][t]["sys_share"] = med(sys_share)
            s[sc][t]["errors"] = sum(r.get("errors", 0) + r.get("non2xx", 0) for r in runs)
            s[sc][t]["runs"] = len(runs)
    if "s5" in results:
        s["s5"] = {t: {"kib_per_conn": med([r["kib_per_conn"] for r in runs]),
                       "conns": med([r["conns"] for r in runs])} for t, runs in results["s5"].items()}
    if "s6" in results:
        s["s6"] = {}
        for t, runs in results["s6"].items():
            o = [r for r in runs if r["mode"] == "ordinary"]
            st = [r for r in runs if r["mode"] == "storm"]
            so = med([r["cpu_s_per_1000"] for r in o])
            ss = med([r["cpu_s_per_1000"] for r in st])
            s["s6"][t] = {"ordinary_cpu_s_per_1000": so, "storm_cpu_s_per_1000": ss,
                          "ratio": ss / so if so and ss else None,
                          "storm_hold_cpu_pct_max": max((r["hold_cpu_pct"] for r in st), default=None),
                          "storm_after_cpu_pct_max": max((r["after_cpu_pct"] for r in st), default=None),
                          "closed_by_proxy": med([r["client"].get("closed_by_proxy") for r in st]),
                          "held": med([r["client"].get("held") for r in st]),
                          "responses": med([r["client"].get("responses") for r in st]),
                          "errors": sum(r["errors"] for r in runs)}
    if "s7" in results:
        s["s7"] = {}
        for scheme, rows in results["s7"].items():
            s["s7"][scheme] = dict(block_ratio(rows), cpu_us_on=med([r["cpu_us_on"] for r in rows]),
                                   cpu_us_off=med([r["cpu_us_off"] for r in rows]))
    if "h2h" in results:
        s["h2h"] = {k: dict(block_ratio(rows), cpu_us_other=med([r["cpu_us_a"] for r in rows]),
                            cpu_us_tern=med([r["cpu_us_b"] for r in rows]))
                    for k, rows in results["h2h"].items()}
    return s


def block_ratio(rows):
    """The ratio of paired runs: the geometric mean of the blocks' medians (each block
    is one pair of process lives, half of them started in each order), ± its standard
    error as a fraction."""
    # results from before the blocks were introduced have two "half"s instead
    blk = [r.get("block", r.get("half")) for r in rows]
    meds = [m for m in (med([r["ratio"] for r, b2 in zip(rows, blk) if b2 == b and r["ratio"]])
                        for b in sorted(set(blk))) if m]
    logs = [math.log(m) for m in meds]
    mean = sum(logs) / len(logs) if logs else None
    sd = statistics.stdev(logs) if len(logs) > 1 else None
    return {"ratio_median": med([r["ratio"] for r in rows if r["ratio"]]),
            "block_medians": meds,
            "ratio": math.exp(mean) if mean is not None else None,
            "ratio_se": sd / len(logs) ** 0.5 if sd is not None else None,
            "ratio_min": min((r["ratio"] for r in rows if r["ratio"]), default=None),
            "ratio_max": max((r["ratio"] for r in rows if r["ratio"]), default=None),
            "runs": len(rows)}


def ratio(a, b):
    return a / b if a is not None and b else None
