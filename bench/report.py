#!/usr/bin/env python3
"""Turns the measurements of scripts/bench.sh into the table and the plot.

    report.py RAW.tsv MACHINE.txt OUT_PREFIX

RAW.tsv has one measurement a line: group, peer, run, value, unit. Every
ratio is computed run by run (ours in run i against the peer in run i, both
measured minutes apart at most), then summarised as median [min, max].
Writes OUT_PREFIX.md, OUT_PREFIX.json and OUT_PREFIX.svg. Standard library only.
"""

import json
import os
import statistics
import sys
from collections import defaultdict


def load(path):
    data = defaultdict(dict)  # (group, peer) -> {run: value}
    units = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            group, peer, run, value, unit = parts
            data[(group, peer)][int(run)] = float(value)
            units[group] = unit
    return data, units


def summary(values):
    values = list(values)
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s, digits=2):
    if s is None:
        return "n/a"
    if s["median"] >= 100:
        digits = 0
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def main():
    raw_path, machine_path, out = sys.argv[1:4]
    data, units = load(raw_path)
    machine = dict(line.split(": ", 1) for line in open(machine_path).read().splitlines() if ": " in line)
    gib_scale = (1 << 30) / float(machine.get("blob_bytes", 1 << 30))

    def series(group, peer):
        return data.get((group, peer), {})

    # The raw limit of a run: the faster of one curl GET and our backend's parallel ranged reads.
    limit = {}
    for run in set(series("seqread", "curl")) | set(series("seqread", "raw16")):
        limit[run] = max(series("seqread", "curl").get(run, 0), series("seqread", "raw16").get(run, 0))
    data[("seqread", "limit")] = limit
    for group in ("cpu-read", "cpu-write"):
        for peer in ("ours", "rclone"):
            data[(group, peer)] = {r: v * gib_scale for r, v in series(group, peer).items()}

    rows = []

    def compare(label, group, peer, ref_group, ref, goal_text, ok, higher_is_better=True):
        mine = series(group, peer)
        theirs = series(ref_group, ref)
        runs = sorted(set(mine) & set(theirs))
        if not runs:
            return
        ratios = [mine[r] / theirs[r] for r in runs if theirs[r] > 0]
        ratio = summary(ratios)
        rows.append(
            {
                "figure": label,
                "unit": units.get(group, ""),
                "ours": summary(mine[r] for r in runs),
                "peer": ref,
                "peer_value": summary(theirs[r] for r in runs),
                "ratio": ratio,
                "goal": goal_text,
                "met": bool(ratio and ok(ratio["median"])),
            }
        )

    def absolute(label, group, goal_text, ok, peer="ours", ref=None):
        mine = series(group, peer)
        if not mine:
            return
        s = summary(mine.values())
        other = summary(series(group, ref).values()) if ref else None
        rows.append(
            {
                "figure": label,
                "unit": units.get(group, ""),
                "ours": s,
                "peer": ref or "",
                "peer_value": other,
                "ratio": None,
                "goal": goal_text,
                "met": ok(s["median"]),
            }
        )

    seq_groups = sorted(g for (g, p) in data if g.startswith("seqread-") and p == "ours")
    for g in seq_groups:
        compare(f"cold {g}", g, "ours", "seqread", "limit", ">= 0.9 x limit", lambda r: r >= 0.9)
        compare(f"cold {g}", g, "ours", g, "rclone", "> 1 x rclone", lambda r: r > 1)
    compare("raw 4 MiB ranges vs 16 MiB", "seqread", "raw4", "seqread", "raw16", "(context)", lambda r: True)
    compare("curl vs raw 16 MiB ranges", "seqread", "curl", "seqread", "raw16", "(context)", lambda r: True)
    compare("warm re-read", "warm", "ours", "warm", "ceiling", ">= 0.8 x ceiling", lambda r: r >= 0.8)
    compare("write until durable", "write", "ours", "write", "raw", ">= 0.9 x raw", lambda r: r >= 0.9)
    compare("write until durable", "write", "ours", "write", "rclone", "> 1 x rclone", lambda r: r > 1)
    compare("CPU per GiB, cold read", "cpu-read", "ours", "cpu-read", "rclone", "<= 0.5 x rclone", lambda r: r <= 0.5)
    compare("CPU per GiB, write", "cpu-write", "ours", "cpu-write", "rclone", "<= 0.5 x rclone", lambda r: r <= 0.5)
    rand_groups = sorted(g for (g, p) in data if g.startswith("rand-") and p == "ours")
    for g in rand_groups:
        window = g.rsplit("-", 1)[-1]
        goal = ("> 1 x rclone", lambda r: r > 1) if window == "5s" else ("(context)", lambda r: True)
        compare(f"random {g[5:]}", g, "ours", g, "rclone", goal[0], goal[1])
        amp = "amp-" + g[5:]
        absolute(f"read amplification {g[5:]}", amp, "<= 2", lambda v: v <= 2, ref="rclone")
    compare("latency hiding (20 ms, 8 x 32 MiB/s)", "shaped", "ours", "shaped", "bound", ">= 0.8 x bound",
            lambda r: r >= 0.8)
    absolute("peak RSS, 4 readers, mem-size-mb 256", "rss-bounded", "<= 320 MiB", lambda v: v <= 320)
    compare("4 readers, mem 256 vs 4096 MiB", "mem-bounded", "ours", "mem-unbounded", "ours", ">= 0.9",
            lambda r: r >= 0.9)

    with open(out + ".json", "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)

    lines = [
        f"Mode `{machine.get('mode')}`, {machine.get('runs')} runs, blobs of {int(machine.get('blob_bytes', 0)) >> 20} MiB; each cell is median [min, max]; "
        "ratios are computed run by run.",
        "",
        "| figure | unit | ours | peer | peer value | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['unit']} | {fmt(r['ours'])} | {r['peer']} | {fmt(r['peer_value'])} | "
            f"{fmt(r['ratio'])} | {r['goal']} | {'yes' if r['met'] else '**no**'} |"
        )
    engine_path = out + "-engine.tsv"
    if os.path.exists(engine_path):
        lines += ["", "Engine hot paths (criterion: median time per operation, 95% confidence interval):", "",
                  "| operation | ns per operation |", "| --- | --- |"]
        for line in open(engine_path).read().splitlines():
            name, median, lower, upper = line.split("\t")
            lines.append(f"| {name} | {float(median):.0f} [{float(lower):.0f}, {float(upper):.0f}] |")
    lines += ["", "Machine and versions:", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

    write_svg(out + ".svg", data, machine)


def write_svg(path, data, machine):
    """Grouped horizontal bars: throughput by workload, ours against its peers."""
    colours = {"ours": "#1f77b4", "rclone": "#ff7f0e", "limit": "#7f7f7f", "ceiling": "#2ca02c",
               "raw": "#7f7f7f", "bound": "#9467bd", "curl": "#bcbd22", "raw16": "#7f7f7f"}
    workloads = []
    for g in sorted(g for (g, p) in data if g.startswith("seqread-") and p == "ours"):
        workloads.append((g.replace("seqread-", "cold read "), [("ours", g), ("rclone", g), ("limit", "seqread")]))
    workloads.append(("warm re-read", [("ours", "warm"), ("ceiling", "warm")]))
    workloads.append(("write until durable", [("ours", "write"), ("rclone", "write"), ("raw", "write")]))
    workloads.append(("latency hiding", [("ours", "shaped"), ("bound", "shaped")]))
    bars = []
    for name, members in workloads:
        for peer, group in members:
            values = list(data.get((group, peer), {}).values())
            if values:
                bars.append((name, peer, statistics.median(values), min(values), max(values)))
    if not bars:
        return
    top = max(b[4] for b in bars) * 1.1
    bar_h, gap, left, width = 14, 10, 170, 520
    height = 60 + len(bars) * bar_h + len(workloads) * gap + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="10" y="20" font-size="14">blobcache throughput (MiB/s, median of {machine.get("runs")} runs, '
           f'whiskers min-max), mode {machine.get("mode")}</text>']
    y = 40
    last = None
    for name, peer, med, lo, hi in bars:
        if name != last:
            y += gap
            out.append(f'<text x="10" y="{y + 11}" font-weight="bold">{name}</text>')
            last = name
        w = med / top * width
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colours.get(peer, "#333")}"/>')
        x_lo, x_hi = left + lo / top * width, left + hi / top * width
        mid = y + (bar_h - 2) / 2
        out.append(f'<line x1="{x_lo:.1f}" y1="{mid}" x2="{x_hi:.1f}" y2="{mid}" stroke="black"/>')
        out.append(f'<text x="{left + w + 4 + (x_hi - left - w if x_hi > left + w else 0):.1f}" y="{y + 10}">'
                   f'{peer} {med:.0f}</text>')
        y += bar_h
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
