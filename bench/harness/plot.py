"""The throughput plot: an SVG of grouped bars, requests/s per scenario and target."""


def svg_plot(summary, path, title):
    """Grouped bars: requests/s per scenario and target, each scenario scaled to its own max."""
    scen = [(k, lbl) for k, lbl in (("s1", "1 HTTP/1.1 keep-alive"), ("s2", "2 HTTPS keep-alive"),
                                     ("s3", "3 HTTPS new conn (hs/s)"), ("s4", "4 HTTP/2 over TLS"))]
    scen = [(k, l) for k, l in scen if k in summary]
    targets = ["direct", "tern", "tern-nowd", "nginx", "haproxy"]
    colors = {"direct": "#999999", "tern": "#1f77b4", "tern-nowd": "#6baed6", "nginx": "#2ca02c",
              "haproxy": "#d62728"}
    W, H, top, left, bottom = 760, 340, 40, 20, 70
    gw = (W - left * 2) / max(len(scen), 1)
    bw = (gw - 30) / len(targets)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    ph = H - top - bottom
    for i, (k, lbl) in enumerate(scen):
        vals = {t: summary[k].get(t, {}).get("rps") for t in targets}
        mx = max([v for v in vals.values() if v] or [1])
        x0 = left + i * gw + 15
        for j, t in enumerate(targets):
            v = vals.get(t)
            if not v:
                continue
            h = ph * v / mx
            x = x0 + j * bw
            y = top + ph - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                       f'fill="{colors[t]}"><title>{t}: {v:.0f} req/s</title></rect>')
            out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{v / 1000:.1f}k</text>')
        out.append(f'<text x="{x0 + (gw - 30) / 2:.1f}" y="{top + ph + 15}" text-anchor="middle">{lbl}</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{W - left}" y2="{top + ph}" stroke="black"/>')
    lx = left + 10
    for t in targets:
        out.append(f'<rect x="{lx}" y="{H - 30}" width="12" height="12" fill="{colors[t]}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 20}">{t}</text>')
        lx += 110
    out.append(f'<text x="{W - left}" y="{H - 6}" text-anchor="end" font-size="9">'
               f'requests/s (handshakes/s for 3); each group scaled to its own maximum</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
