"""Turn the runner's raw results into report.json, report.md and PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def summary(values: list[Any]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def med(summaries: dict[str, Any], name: str, metric: str) -> float | None:
    s = summaries.get(name, {}).get(metric)
    return s["median"] if s else None


def ratio(x: float | None, y: float | None) -> float | None:
    if x is None or y is None or y == 0:
        return None
    return x / y


def compute(results: dict[str, Any], samples: dict[str, list[float]]) -> dict[str, Any]:
    summaries: dict[str, dict[str, Any]] = {}
    for name, metrics in results["runs"].items():
        summaries[name] = {m: summary(v) for m, v in metrics.items()}
    for name, holds in results["hold"].items():
        ok = [h for h in holds if "rss_per_conn_kb" in h]
        for key in ("rss_per_conn_kb", "pss_per_conn_kb", "rss_retained_after_close_kb",
                    "probe_rtt_max_us", "hold_connect_p99_us", "open_s"):
            vals = [h[key] for h in ok if key in h]
            if vals:
                summaries.setdefault(name, {})[f"hold_{key}"] = summary(vals)
    cold = results["cold"]
    cold_s = {k: ({"p50_us": pct(v, 0.5), "p99_us": pct(v, 0.99), "min_us": min(v),
                   "max_us": max(v), "n": len(v)} if v else None) for k, v in cold.items()}
    tls = results.get("tls_baseline") or {}

    n = "nipc"
    targets = []

    def target(what: str, value: float | None, op: str, bound: float, basis: str) -> None:
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets.append({"target": what, "measured": value, "op": op, "bound": bound,
                        "met": ok, "basis": basis})

    target("throughput vs ssh -L aes128-gcm", ratio(med(summaries, n, "tput_MBps"),
           med(summaries, "ssh", "tput_MBps")), ">=", 1.0, f"median MB/s one way, {results['meta']['params']['tput_bytes'] >> 20} MiB")
    target("throughput vs raw Unix socket", ratio(med(summaries, n, "tput_MBps"),
           med(summaries, "unix", "tput_MBps")), ">=", 0.25, "median MB/s one way")
    target("round trip p50 vs ssh -L", ratio(med(summaries, n, "rtt_p50_us"),
           med(summaries, "ssh", "rtt_p50_us")), "<=", 1.5, "median of per-rep p50")
    target("warm connect p50 vs open ssh -tt -L forward",
           ratio(med(summaries, n, "connect_p50_us"), med(summaries, "ssh-tt", "connect_p50_us")),
           "<=", 3.0, "median of per-rep p50, connect -> first byte")
    target("cold connect p50 vs fresh ssh session",
           ratio((cold_s.get("nipc_cold_connect_us") or {}).get("p50_us"),
                 (cold_s.get("fresh_ssh_session_us") or {}).get("p50_us")),
           "<=", 0.1, "first connect after both daemons start vs `ssh b true`")
    target("connection rate vs fresh TLS handshake per connection",
           ratio(med(summaries, n, "rate_per_s"), tls.get("cpu_cap_rate_per_s")), ">=", 2.0,
           "median connects/s vs 2 cores / CPU of one TLS 1.3 handshake (both sides)")
    target("connection rate vs open ssh -tt -L forward",
           ratio(med(summaries, n, "rate_per_s"), med(summaries, "ssh-tt", "rate_per_s")),
           ">=", 1.0, "median connects/s, same clients")
    pg = f"{results['meta']['params'].get('pg_secs')} s runs, -c 4 -j 2, median TPS"
    target("pgbench -S -C TPS vs open ssh -tt -L forward",
           ratio(med(summaries, n, "pgC_tps"), med(summaries, "ssh-tt", "pgC_tps")),
           ">=", 1.0, pg + ", a new connection per transaction")
    target("pgbench -S TPS vs ssh -L", ratio(med(summaries, n, "pgS_tps"),
                                             med(summaries, "ssh", "pgS_tps")),
           ">=", 1.0, pg + ", persistent connections")
    target("RSS per idle routed connection (KB, both daemons)",
           med(summaries, n, "hold_rss_per_conn_kb"), "<=", 35.0,
           f"{_hold_n(results, n)} held at once")
    stall = med(summaries, n, "hold_probe_rtt_max_us")
    target("reactor stall while opening 5,000 (probe RTT max, ms)",
           None if stall is None else stall / 1e3, "<=", 50.0,
           "1-byte echo every 1 ms through NIPC while the 5,000 open")
    held = med(summaries, n, "hold_rss_per_conn_kb")
    kept = med(summaries, n, "hold_rss_retained_after_close_kb")
    target("memory returned after close (retained / grown)",
           None if held is None or kept is None or held <= 0
           else kept / (held * _hold_n(results, n)), "<=", 0.1, "RSS 3 s after all closed")
    extra = {
        "nipc_rtt_p50_vs_ssh_tt": ratio(med(summaries, n, "rtt_p50_us"),
                                        med(summaries, "ssh-tt", "rtt_p50_us")),
        "nipc_rate_vs_socat": ratio(med(summaries, n, "rate_per_s"),
                                    med(summaries, "socat", "rate_per_s")),
        "nipc_rate_vs_tls_sequential": ratio(med(summaries, n, "rate_per_s"),
                                             tls.get("sequential_rate_per_s")),
        "nipc_rss_per_conn_vs_measured_ssh": ratio(held, med(summaries, "ssh",
                                                             "hold_rss_per_conn_kb")),
        "nipc_tput2_vs_ssh": ratio(med(summaries, n, "tput2_MBps"),
                                   med(summaries, "ssh", "tput2_MBps")),
        "nipc_pgS_tps_vs_ssh_tt": ratio(med(summaries, n, "pgS_tps"),
                                        med(summaries, "ssh-tt", "pgS_tps")),
        "nipc_pgS_tps_vs_b": ratio(med(summaries, n, "pgS_tps"),
                                   med(summaries, "unix", "pgS_tps")),
        "nipc_pgC_tps_vs_ssh": ratio(med(summaries, n, "pgC_tps"),
                                     med(summaries, "ssh", "pgC_tps")),
        "nipc_pgC_tps_vs_b": ratio(med(summaries, n, "pgC_tps"),
                                   med(summaries, "unix", "pgC_tps")),
    }
    return {"summaries": summaries, "cold": cold_s, "tls_baseline": tls, "targets": targets,
            "other_ratios": extra}


def _hold_n(results: dict[str, Any], name: str) -> int:
    holds = results["hold"].get(name) or [{}]
    return int(holds[0].get("n", 1))


def fmt(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "-"
    f = f"{{:.{digits}f}}"
    return "/".join(f.format(s[k]) for k in ("min", "median", "max"))


def write_report(results: dict[str, Any], samples: dict[str, list[float]],
                 labels: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    comp = compute(results, samples)
    doc = {**results, **comp, "labels": labels}
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(doc))
    try:
        plots(doc, samples, out)
    except Exception as e:  # noqa: BLE001 - a plot failure must not lose the numbers
        print(f"plots failed: {e}")


def markdown(doc: dict[str, Any]) -> str:
    meta, S, labels = doc["meta"], doc["summaries"], doc["labels"]
    p = meta["params"]
    L = [f"# NIPC benchmark — {meta['date']} ({meta['profile']})", ""]
    L.append(f"{meta['cpus']} CPUs, kernel {meta['kernel']}; " + ", ".join(f"{k} {v}" for k, v in meta['versions'].items()) + ". "
             f"Load average at start/end: {meta['loadavg_start'].split()[0]} / "
             f"{meta.get('loadavg_end', '?').split()[0]}; other sandboxes' namespaces present: "
             f"{len(meta.get('other_netns', []))} (they share the 2 cores: expect noise). "
             f"Run took {meta.get('duration_s', 0):.0f} s.")
    L.append("")
    L.append(f"Cells are min/median/max over {p['reps']} rotated repetitions. Throughput "
             f"{p['tput_bytes'] >> 20} MiB one way, {p['tput2_bytes'] >> 20} MiB each way for "
             f"'both ways'; RTT over {p['lat_n']} 1-byte echoes; connect = connect -> first byte "
             f"({p['conn_n']} sequential, warm); rate = {p['rate_procs']} clients looping "
             f"connect/greeting/close for {p['rate_secs']:.0f} s; CPU = utime+stime of the two "
             "relays' process trees (A on host a, B on host b).")
    L.append("")
    L.append("| contender | MB/s one way | MB/s each way, both at once | CPU-s/GiB A | "
             "CPU-s/GiB B | RTT p50 us | RTT p99 us | connect p50 us | connect p99 us | "
             "CPU ms/connect A | CPU ms/connect B | connects/s | RSS KB/idle conn (A+B) |")
    L.append("|---" * 13 + "|")
    for name, label in labels.items():
        s = S.get(name, {})
        L.append(" | ".join([
            f"| {label}", fmt(s.get("tput_MBps")), fmt(s.get("tput2_MBps")),
            fmt(s.get("cpu_s_per_GiB_A"), 2), fmt(s.get("cpu_s_per_GiB_B"), 2),
            fmt(s.get("rtt_p50_us")), fmt(s.get("rtt_p99_us")),
            fmt(s.get("connect_p50_us")), fmt(s.get("connect_p99_us")),
            fmt(s.get("cpu_ms_per_connect_A"), 2), fmt(s.get("cpu_ms_per_connect_B"), 2),
            fmt(s.get("rate_per_s")), fmt(s.get("hold_rss_per_conn_kb"), 1)]) + " |")
    L.append("")
    cold = doc["cold"]
    tls = doc.get("tls_baseline") or {}
    L.append("## Cold connects and the TLS baseline")
    L.append("")
    for key, what in (("nipc_cold_connect_us", "NIPC cold connect (first after both daemons "
                       "start: daemon TGT, S4U2Self, S4U2Proxy, acceptor creds)"),
                      ("fresh_ssh_session_us", "fresh `ssh -c aes128-gcm b true` session")):
        c = cold.get(key)
        if c:
            L.append(f"- {what}: p50 {c['p50_us'] / 1e3:.1f} ms, p99 {c['p99_us'] / 1e3:.1f} ms, "
                     f"min {c['min_us'] / 1e3:.1f} ms, max {c['max_us'] / 1e3:.1f} ms (n={c['n']})")
    if tls:
        L.append(f"- fresh TLS 1.3 handshake per connection (openssl s_time -new -> s_server, "
                 f"EC P-256): {tls['sequential_rate_per_s']:.0f}/s sequential; CPU "
                 f"{tls['client_cpu_ms_per_handshake']:.2f} ms client + "
                 f"{tls['server_cpu_ms_per_handshake']:.2f} ms server per handshake, so 2 cores "
                 f"allow at most **{tls['cpu_cap_rate_per_s']:.0f}/s** (the rate target's basis)")
    L.append("")
    L.append("## Idle connections held at once")
    L.append("")
    L.append("Each repetition starts from fresh relays: both NIPC daemons (then 3 warm-up "
             "connects), a new ssh client (so a new sshd session); socat forks per connection.")
    L.append("")
    L.append("| contender | n | open s | RSS KB/conn | PSS KB/conn | RSS before / held / after "
             "close (KB) | probe RTT p50/p99/max ms while opening | hold connect p99 ms | "
             "healthy after |")
    L.append("|---" * 9 + "|")
    for name, holds in doc["hold"].items():
        for h in holds:
            if "rss_per_conn_kb" not in h:
                L.append(f"| {labels.get(name, name)} | - | error: {h.get('error', '?')[:200]} |"
                         + " |" * 6)
                continue
            probe = "/".join(f"{h[k] / 1e3:.1f}" for k in
                             ("probe_rtt_p50_us", "probe_rtt_p99_us", "probe_rtt_max_us")
                             ) if "probe_rtt_max_us" in h else "-"
            L.append(f"| {labels.get(name, name)} | {h['n']} | {h['open_s']:.1f} | "
                     f"{h['rss_per_conn_kb']:.1f} | {h['pss_per_conn_kb']:.1f} | "
                     f"{h['rss_before_kb']} / {h['rss_held_kb']} / {h['rss_after_close_kb']} | "
                     f"{probe} | {h.get('hold_connect_p99_us', 0) / 1e3:.1f} | "
                     f"{h.get('healthy_after')} |")
    L.append("")
    L.extend(pgbench_section(doc))
    L.append("## Targets: issue 7's, and issue 12's new ones (ratios measured in this run)")
    L.append("")
    L.append("| target | measured | bound | met | basis |")
    L.append("|---|---|---|---|---|")
    for t in doc["targets"]:
        v = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        met = {True: "yes", False: "**no**", None: "?"}[t["met"]]
        L.append(f"| {t['target']} | {v} | {t['op']} {t['bound']} | {met} | {t['basis']} |")
    L.append("")
    L.append("Other ratios: " + ", ".join(
        f"{k} {v:.3g}" for k, v in doc["other_ratios"].items() if v is not None))
    L.append("")
    L.extend(defaults_section(doc))
    errs = doc.get("errors") or []
    L.append("## Errors during the run")
    L.append("")
    L.extend(f"- {e[:600]}" for e in errs) if errs else L.append("none")
    L.append("")
    findings = doc.get("nipc_log_findings") or {}
    if findings:
        L.append("## NIPC daemon logs (warning/error lines)")
        L.append("")
        for host, f in findings.items():
            L.append(f"- host {host}: {f['log_lines']} log lines, audit results "
                     f"{f['audit_results']}, {f['findings']} warn/error/failure lines" + (
                         "; most frequent: " + "; ".join(f"`{k[:140]}` x{c}"
                                                         for k, c in f['top'][:8])
                         if f['top'] else ""))
        L.append("")
    L.append("Plots: `throughput.png`, `latency.png`, `connect_cdf.png`, `rate_memory.png`"
             + (", `pgbench.png`." if any("pgS_tps" in s for s in S.values()) else "."))
    return "\n".join(L) + "\n"


#: pgbench's paths, by the contender whose relays they go through
PG_LABELS = {"unix": "on b directly (the ceiling)", "ssh": "ssh -N -L aes128-gcm",
             "ssh-tt": "open ssh -tt -L aes128-gcm", "nipc": "NIPC import"}


def pgbench_section(doc: dict[str, Any]) -> list[str]:
    S, p = doc["summaries"], doc["meta"]["params"]
    rows = [n for n in PG_LABELS if S.get(n, {}).get("pgS_tps") or S.get(n, {}).get("pgC_tps")]
    if not rows:
        return []
    L = ["## pgbench: a real client", "",
         f"PostgreSQL 15 on b, Unix socket, `peer` authentication; `pgbench -n -S -c "
         f"{p.get('pg_clients')} -j {p.get('pg_threads')} -T {p.get('pg_secs')}` as alice on "
         "a (on b for the ceiling) against pgbench's scale-1 tables; min/median/max over "
         f"{p.get('pg_reps')} rotated repetitions. `-S`: persistent connections; `-S -C`: a new "
         "connection per transaction. The ssh forwards' sshd connects as root, which a pg_ident "
         "map makes alice; NIPC's path is an `[[imports]]` socket on a's daemon, so b's daemon "
         "connects as alice's own uid. Relay CPU as in the first table (A on a, B on b), per "
         "transaction; with -C each transaction is one connection.", "",
         "| path | -S TPS | -S latency ms | CPU ms/tx A | CPU ms/tx B | -S -C TPS | "
         "-S -C latency ms | connection ms | CPU ms/conn A | CPU ms/conn B |",
         "|---" * 10 + "|"]
    for n in rows:
        s = S[n]
        L.append(" | ".join([
            f"| {PG_LABELS[n]}", fmt(s.get("pgS_tps")), fmt(s.get("pgS_lat_ms"), 3),
            fmt(s.get("pgS_cpu_ms_per_tx_A"), 3), fmt(s.get("pgS_cpu_ms_per_tx_B"), 3),
            fmt(s.get("pgC_tps")), fmt(s.get("pgC_lat_ms"), 2), fmt(s.get("pgC_conn_ms"), 2),
            fmt(s.get("pgC_cpu_ms_per_tx_A"), 2), fmt(s.get("pgC_cpu_ms_per_tx_B"), 2)]) + " |")
    L.append("")
    for w, what in (("pgS_tps", "-S TPS"), ("pgC_tps", "-S -C TPS")):
        nipc = med(S, "nipc", w)
        parts = [f"{ratio(nipc, med(S, o, w)):.2f}x {PG_LABELS[o]}"
                 for o in ("ssh", "ssh-tt", "unix") if ratio(nipc, med(S, o, w)) is not None]
        if parts:
            L.append(f"- NIPC {what}: " + ", ".join(parts))

    def cpu(name: str, w: str) -> float | None:
        a, b = med(S, name, f"{w}_cpu_ms_per_tx_A"), med(S, name, f"{w}_cpu_ms_per_tx_B")
        return None if a is None or b is None else a + b

    for w, what in (("pgS", "per -S transaction"), ("pgC", "per -S -C connection")):
        parts = [f"{ratio(cpu('nipc', w), cpu(o, w)):.1f}x {PG_LABELS[o]}'s"
                 for o in ("ssh", "ssh-tt") if ratio(cpu("nipc", w), cpu(o, w)) is not None]
        if parts:
            L.append(f"- NIPC's relay CPU (A + B) {what}: " + ", ".join(parts))
    L.append("")
    return L


def defaults_section(doc: dict[str, Any]) -> list[str]:
    d = doc.get("defaults")
    if not d:
        return []
    lim = d.get("limits") or {}
    L = ["## NIPC with the shipped admission limits", "",
         f"All figures above are with the limits lifted. This short run ({d['secs']:.0f} s each) "
         "restarts both daemons with etc/nipcd.toml's [limits] ("
         + ", ".join(f"{k} {v}" for k, v in lim.items()) + ").", ""]
    S = doc["summaries"]

    def lifted(metric: str, unit: str) -> str:
        m = med(S, "nipc", metric)
        return "" if m is None else f" (lifted: {m:.0f}{unit})"

    if "rate_per_s" in d:
        L.append(f"- connection rate ({doc['meta']['params']['rate_procs']} clients, one uid): "
                 f"{d['rate_per_s']:.0f}/s{lifted('rate_per_s', '/s')}, {d['rate_errors']} "
                 "refused or failed connects")
    for w, what in (("pgC", "pgbench -S -C"), ("pgS", "pgbench -S")):
        r = d.get(w)
        if r:
            L.append(f"- {what}: {r['tps']:.0f} TPS{lifted(w + '_tps', ' TPS')}, "
                     f"{r['tx']:.0f} transactions, "
                     f"{r['failed']:.0f} failed, {r['aborted']} clients aborted"
                     + (f" (`{' '.join(r['stderr'].split())[-200:]}`)"
                        if r.get("stderr") else ""))
    for host, refused in (d.get("refused") or {}).items():
        L.append(f"- daemon {host} refused: " + (", ".join(f"{k} x{v}" for k, v in refused.items())
                                                 or "none"))
    if d.get("error"):
        L.append(f"- error: {d['error'][:400]}")
    L.append("")
    return L


def plots(doc: dict[str, Any], samples: dict[str, list[float]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S, labels = doc["summaries"], doc["labels"]
    names = list(labels)

    def bars(ax: Any, metrics: list[tuple[str, str]], scale: float = 1.0) -> None:
        width = 0.8 / len(metrics)
        for i, (metric, legend) in enumerate(metrics):
            xs, ys, lo, hi = [], [], [], []
            for j, n in enumerate(names):
                s = S.get(n, {}).get(metric)
                if s:
                    xs.append(j + i * width)
                    ys.append(s["median"] * scale)
                    lo.append((s["median"] - s["min"]) * scale)
                    hi.append((s["max"] - s["median"]) * scale)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=legend)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.0f}", (x, y), ha="center", va="bottom", fontsize=7)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
        ax.set_xticklabels(names)
        ax.legend(fontsize=8)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars(ax, [("tput_MBps", "one way"), ("tput2_MBps", "each way, both at once")])
    ax.set_ylabel("MB/s (median, bars: min-max)")
    ax.set_title("Bulk throughput")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars(ax, [("rtt_p50_us", "RTT p50"), ("rtt_p99_us", "RTT p99")])
    ax.set_ylabel("microseconds (median over reps, bars: min-max)")
    ax.set_title("Round trip of a 1-byte message")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    for key, vals in samples.items():
        if not vals:
            continue
        v = sorted(x * 1e3 for x in vals)
        ys = [(i + 1) / len(v) for i in range(len(v))]
        style = "--" if "cold" in key or "fresh" in key else "-"
        ax.step(v, ys, style, where="post", label=f"{key} (n={len(v)})")
    ax.set_xscale("log")
    ax.set_xlabel("connect -> first byte, ms (log)")
    ax.set_ylabel("fraction of connects")
    ax.set_title("Connect latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "connect_cdf.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    bars(a1, [("rate_per_s", "connects/s")])
    tls = doc.get("tls_baseline") or {}
    if tls.get("cpu_cap_rate_per_s"):
        a1.axhline(tls["cpu_cap_rate_per_s"], color="red", ls="--", lw=1,
                   label="fresh TLS handshake cap")
        a1.axhline(2 * tls["cpu_cap_rate_per_s"], color="green", ls=":", lw=1,
                   label="target: 2x that")
        a1.legend(fontsize=7)
    a1.set_yscale("log")
    a1.set_title("Sustained connection rate (connects/s, log)")
    held = [n for n in names if S.get(n, {}).get("hold_rss_per_conn_kb")]
    a2.bar(held, [S[n]["hold_rss_per_conn_kb"]["median"] for n in held])
    for i, n in enumerate(held):
        a2.annotate(f"{S[n]['hold_rss_per_conn_kb']['median']:.1f}",
                    (i, S[n]["hold_rss_per_conn_kb"]["median"]), ha="center", va="bottom",
                    fontsize=8)
    a2.axhline(35, color="green", ls=":", lw=1, label="target 35 KB")
    a2.set_yscale("log")
    a2.set_ylabel("KB RSS per idle connection, both relays")
    a2.legend(fontsize=7)
    a2.set_title("Memory per idle routed connection")
    fig.tight_layout()
    fig.savefig(out / "rate_memory.png", dpi=110)
    plt.close(fig)

    if not any(S.get(n, {}).get("pgS_tps") for n in PG_LABELS):
        return
    names[:] = [n for n in PG_LABELS if n in S]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    bars(a1, [("pgS_tps", "pgbench -S")])
    a1.set_title("pgbench -S, persistent connections (TPS)")
    bars(a2, [("pgC_tps", "pgbench -S -C")])
    a2.set_title("pgbench -S -C, a connection per transaction (TPS)")
    for ax in (a1, a2):
        ax.set_xticklabels([PG_LABELS[n].replace(" aes128-gcm", "").replace(" (", "\n(")
                            for n in names], fontsize=8)
        ax.set_ylabel("TPS (median, bars: min-max)")
    fig.tight_layout()
    fig.savefig(out / "pgbench.png", dpi=110)
    plt.close(fig)
