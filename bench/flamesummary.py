#!/usr/bin/env python3
"""Summarize a flamegraph SVG from Tern's /debug/pprof/flamegraph: self time per function
and per area (syscalls, TLS, HTTP parsing, allocation, ...).

    bench/flamesummary.py bench/profile-s1.svg [N]
"""

import collections
import html
import re
import sys

FRAME = re.compile(r'<g><title>(.*?) \((\d+) samples?, [\d.]+%\)</title><rect x="([\d.]+)" y="([\d.]+)" '
                   r'width="([\d.]+)"')

AREAS = [
    ("syscall: write/send", ("__send", "__libc_write", "writev", "__write", "sendto", "sendmsg")),
    ("syscall: read/recv", ("__libc_read", "recv", "__read", "readv")),
    ("syscall: epoll", ("epoll_wait",)),
    ("syscall: other", ("syscall", "__close", "accept4", "connect", "setsockopt", "getsockopt")),
    ("TLS (rustls / ring crypto)", ("rustls", "ring", "aes", "chacha", "gcm", "sha", "p256", "ecp_")),
    ("HTTP/2 (h2)", ("h2::",)),
    ("HTTP/1 parsing and encoding (hyper, httparse)", ("httparse", "hyper::proto::h1::role", "hyper::proto::h1::io",
                                                        "hyper::proto::h1::encode", "hyper::proto::h1::decode")),
    ("headers and URIs (http crate, tern-http)", ("http::header", "http::uri", "tern_http::headers", "HeaderMap")),
    ("allocation (malloc / free / memcpy)", ("malloc", "free", "realloc", "calloc", "memcpy", "memmove",
                                              "alloc::", "_int_", "cfree", "memset")),
    ("tokio scheduler, timers, I/O driver", ("tokio::runtime", "tokio::time", "tokio::sync", "mio::")),
    ("spin watchdog (pollwatch)", ("pollwatch",)),
    ("metrics", ("metrics",)),
    ("tracing / logging", ("tracing",)),
    ("tern (proxy, balancer, listener)", ("tern_",)),
    ("hyper (other)", ("hyper",)),
]


def parse(path):
    with open(path) as f:
        text = f.read()
    frames = []
    for m in FRAME.finditer(text):
        name = html.unescape(m.group(1))
        frames.append((name, int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5))))
    return frames


def self_samples(frames):
    """Self samples of each frame: its samples minus those of the frames directly above it."""
    if not frames:
        return []
    by_y = collections.defaultdict(list)
    for fr in frames:
        by_y[fr[3]].append(fr)
    ys = sorted(by_y)
    step = min(b - a for a, b in zip(ys, ys[1:])) if len(ys) > 1 else 16.0
    out = []
    for name, n, x, y, w in frames:
        above = by_y.get(round(y - step, 1), []) or by_y.get(y - step, [])
        kids = sum(k[1] for k in above if k[2] >= x - 0.01 and k[2] + k[4] <= x + w + 0.01)
        out.append((name, max(n - kids, 0)))
    return out


def area(name):
    low = name.lower()
    for label, keys in AREAS:
        if any(k.lower() in low for k in keys):
            return label
    return "other"


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    frames = parse(path)
    total = max((fr[1] for fr in frames), default=0)
    selfs = self_samples(frames)
    by_fn = collections.Counter()
    by_area = collections.Counter()
    for name, n in selfs:
        by_fn[name] += n
        by_area[area(name)] += n
    print(f"{path}: {total} samples")
    print("\nself time by area:")
    for a, n in by_area.most_common():
        print(f"  {n / total * 100:5.1f}%  {a}")
    print(f"\ntop {top} functions by self time:")
    for name, n in by_fn.most_common(top):
        print(f"  {n / total * 100:5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
