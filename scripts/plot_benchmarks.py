#!/usr/bin/env python3
"""Table and plot of the load-generator results (standard library only).

    python3 scripts/plot_benchmarks.py [bench-results] [benchmarks.svg]

Reads every bench-results/calls-*.json written by `loadgen --json`, prints a Markdown table
(paste it into BENCHMARKS.md) and writes benchmarks.svg: four panels against concurrent calls —
daemon CPU (cores), relay delay p99 each way (ms; to the kernel arrival, and one to the peer's
read), barge-in p99 (ms), RSS per call (KiB). Runs made before `relay_read_ms` existed (their
relay delay is to the peer's read) show "–" in that column, and so do runs made before loadgen
measured the host's speed (`host.calibration`) in the last one.
"""

import glob
import json
import os
import sys


def load(folder):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "calls-*.json"))):
        with open(path) as f:
            r = json.load(f)
        r["_file"] = os.path.basename(path)
        runs.append(r)
    runs.sort(key=lambda r: r["calls"])
    return runs


def g(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def busy(r):
    """Busy and stolen cores. Runs before `steal_cores` existed counted steal in `busy_cores`:
    they show "(with steal)"."""
    b, st = g(r, "host", "busy_cores"), g(r, "host", "steal_cores")
    if st is None:
        return f"{fmt(b)} (with steal)"
    return f"{fmt(b)} / {fmt(st, 3)}"


def speed(c):
    """loadgen's host calibration (since 2026-11-22): ns per arithmetic step, µs per loopback
    TCP message on one CPU and (since the fourth VM) ms a 1 ms sleep ends late at p99; "–" for
    older runs."""
    if not c:
        return "–"
    out = f"{fmt(c.get('cpu_ns_per_step'))} · {fmt(c.get('loopback_same_cpu_us'), 1)}"
    if c.get("wake_late_p99_us") is not None:
        out += f" · {fmt(c['wake_late_p99_us'] / 1000, 2)}"
    return out


def table(runs):
    head = (
        "| calls | steady s | completed / failed | lost frames caller / agent "
        "| caller→RT p50 / p99 / p99.9 / max ms | RT→caller p50 / p99 / p99.9 / max ms "
        "| to the peer's read p99 c→RT / RT→c ms "
        "| barge-in p50 / p99 ms | first audio p50 / p99 ms | daemon CPU (cores) "
        "| RSS peak MiB | RSS / call KiB | generator CPU (cores) | fake CPU (cores) "
        "| host busy / stolen (cores) | host speed before → after: ns/step · µs/message · wake-up p99 ms |"
    )
    sep = "|" + "---|" * 16
    rows = [head, sep]
    for r in runs:
        up = g(r, "relay_ms", "caller_to_realtime", default={})
        down = g(r, "relay_ms", "realtime_to_caller", default={})
        # the histogram's last bucket is "2 s or more"
        cap = lambda v: "≥2000" if isinstance(v, (int, float)) and 2000.0 <= v < 2000.02 else fmt(v, 2)
        leg = lambda d: " / ".join(cap(d.get(k)) for k in ("p50", "p99", "p999", "max"))
        peak = g(r, "daemon", "rss_peak_kib")
        gen_ = fmt(g(r, "generator", "cpu_cores"))
        if g(r, "generator", "bottleneck"):
            gen_ += " (lagging)"
        rows.append(
            "| {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["calls"],
                fmt(r.get("steady_s"), 0),
                r.get("calls_completed"),
                r.get("calls_failed"),
                fmt(g(r, "frames", "caller_lost")),
                fmt(g(r, "frames", "agent_lost")),
                leg(up),
                leg(down),
                cap(g(r, "relay_read_ms", "caller_to_realtime", "p99")),
                cap(g(r, "relay_read_ms", "realtime_to_caller", "p99")),
                fmt(g(r, "barge_in_ms", "p50")),
                fmt(g(r, "barge_in_ms", "p99")),
                fmt(g(r, "first_audio_ms", "p50")),
                fmt(g(r, "first_audio_ms", "p99")),
                fmt(g(r, "daemon", "cpu_cores"), 3),
                fmt(peak / 1024.0 if peak else None, 1),
                fmt(g(r, "daemon", "rss_per_call_kib"), 1),
                gen_,
                fmt(g(r, "fake_realtime", "cpu_cores")),
                busy(r),
                speed(g(r, "host", "calibration", "before")) + " → " + speed(g(r, "host", "calibration", "after")),
            )
        )
    return "\n".join(rows)


def panel(x0, y0, w, h, title, xs, series, ylabel):
    """One line chart; series = [(name, colour, [y...])]."""
    out = []
    ys = [y for _, _, vals in series for y in vals if y is not None]
    ymax = max(ys) if ys else 1.0
    ymax = ymax * 1.15 if ymax > 0 else 1.0
    xmax = max(xs) * 1.05 if xs else 1
    px = lambda x: x0 + 50 + (w - 70) * x / xmax
    py = lambda y: y0 + h - 30 - (h - 60) * y / ymax
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(xmax)}" y2="{py(0)}" stroke="#333"/>')
    out.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(ymax)}" stroke="#333"/>')
    for i in range(5):
        yv = ymax * i / 4
        out.append(f'<line x1="{px(0)}" y1="{py(yv)}" x2="{px(xmax)}" y2="{py(yv)}" stroke="#ddd"/>')
        out.append(f'<text x="{px(0) - 4}" y="{py(yv) + 4}" text-anchor="end" font-size="10">{yv:.3g}</text>')
    for x in xs:
        out.append(f'<text x="{px(x)}" y="{py(0) + 14}" text-anchor="middle" font-size="10">{x}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h - 2}" text-anchor="middle" font-size="10">concurrent calls</text>')
    out.append(f'<text x="{x0 + 10}" y="{y0 + 30}" font-size="10">{ylabel}</text>')
    for k, (name, colour, vals) in enumerate(series):
        pts = [(px(x), py(y)) for x, y in zip(xs, vals) if y is not None]
        if len(pts) > 1:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for a, b in pts:
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{x0 + w - 10}" y="{y0 + 34 + 13 * k}" text-anchor="end" font-size="10" fill="{colour}">{name}</text>')
    return out


def svg(runs):
    xs = [r["calls"] for r in runs]
    W, H = 900, 620
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    col = lambda *k: [g(r, *k) for r in runs]
    parts += panel(0, 0, W / 2, H / 2, "Daemon CPU (share of one core)", xs,
                   [("daemon", "#c0392b", col("daemon", "cpu_cores")),
                    ("generator", "#7f8c8d", col("generator", "cpu_cores")),
                    ("fake-realtime", "#95a5a6", col("fake_realtime", "cpu_cores"))], "cores")
    parts += panel(W / 2, 0, W / 2, H / 2, "Added relay delay p99 (ms)", xs,
                   [("caller→realtime p99", "#2980b9", col("relay_ms", "caller_to_realtime", "p99")),
                    ("realtime→caller p99", "#27ae60", col("relay_ms", "realtime_to_caller", "p99")),
                    ("caller→realtime p99.9", "#85c1e9", col("relay_ms", "caller_to_realtime", "p999")),
                    ("realtime→caller p99.9", "#82e0aa", col("relay_ms", "realtime_to_caller", "p999")),
                    ("caller→realtime p99 to the fake's read", "#f39c12",
                     col("relay_read_ms", "caller_to_realtime", "p99"))], "ms")
    parts += panel(0, H / 2, W / 2, H / 2, "Barge-in: speech onset → clear (audio ms)", xs,
                   [("p50", "#8e44ad", col("barge_in_ms", "p50")),
                    ("p99", "#d35400", col("barge_in_ms", "p99"))], "ms")
    parts += panel(W / 2, H / 2, W / 2, H / 2, "Daemon memory per call (KiB)", xs,
                   [("(VmHWM − idle RSS) / calls", "#16a085", col("daemon", "rss_per_call_kib"))], "KiB")
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "bench-results"
    out = sys.argv[2] if len(sys.argv) > 2 else "benchmarks.svg"
    runs = load(folder)
    if not runs:
        sys.exit(f"no {folder}/calls-*.json")
    print(table(runs))
    with open(out, "w") as f:
        f.write(svg(runs))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
