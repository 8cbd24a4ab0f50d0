# Measurements and the report of bench/serve.sh.
#
#   serve-stats.py ramp URL TOKEN TASKS LAUNCHED START_AT
#       polls GET /v1/tasks until TASKS tasks run (or START_AT + 10 s); prints JSON
#   serve-stats.py pss LABEL=PID,PID,... ...
#       proportional set size (KiB) of each process tree, split into the roots
#       themselves, the agents (python3) and everything else below the roots; prints JSON
#   serve-stats.py cpu LABEL=PID,PID,... ...
#       CPU time (user + system, clock ticks) of each process tree, split as for pss,
#       and the machine's /proc/stat totals; prints JSON (take two, subtract)
#   serve-stats.py report WORKDIR TASKS SECONDS
#       reads what serve.sh left in WORKDIR, prints the report, writes results.json
import calendar, glob, json, os, sys, time, urllib.request


def ramp(url, token, tasks, launched, start_at):
    seen = {}
    while time.time() < start_at + 10:
        req = urllib.request.Request(url + "/v1/tasks", headers={"Authorization": "Bearer " + token})
        try:
            listed = json.load(urllib.request.urlopen(req, timeout=30))
        except OSError:
            time.sleep(0.5)
            continue
        now = time.time()
        for t in listed:
            if t.get("state") == "running" and t["task"] not in seen:
                seen[t["task"]] = now - launched
        if len(seen) >= tasks:
            break
        time.sleep(0.5)
    times = sorted(seen.values())
    print(json.dumps({"running": len(times), "seconds_to_running": times,
                      "all_running_after": times[-1] if len(times) >= tasks else None,
                      "ramp": start_at - launched}))


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes():
    children, comm = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        pid = int(d)
        comm[pid] = name
        children.setdefault(ppid, []).append(pid)
    return children, comm


def ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime: the 12th-15th fields after the name; the
        # children's times count what exited in between (reaped processes).
        return sum(int(x) for x in fields[11:15])
    except (OSError, IndexError, ValueError):
        return 0


def machine_ticks():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return {"user": cpu[0] + cpu[1], "system": cpu[2] + cpu[5] + cpu[6], "idle": cpu[3],
            "iowait": cpu[4], "total": sum(cpu[:8])}


def trees(specs, measure):
    """measure(pid) summed over each LABEL=PIDS tree: roots, agents, the rest."""
    children, comm = processes()
    out = {}
    for spec in specs:
        label, pids = spec.split("=", 1)
        roots = [int(p) for p in pids.split(",") if p]
        part = {"roots": {"count": 0, "sum": 0}, "agent": {"count": 0, "sum": 0},
                "other": {"count": 0, "sum": 0}, "other_comms": {}}
        for root in roots:
            if root not in comm:
                continue
            part["roots"]["count"] += 1
            part["roots"]["sum"] += measure(root)
            stack = list(children.get(root, []))
            while stack:
                pid = stack.pop()
                stack.extend(children.get(pid, []))
                kind = "agent" if comm[pid].startswith("python3") else "other"
                part[kind]["count"] += 1
                part[kind]["sum"] += measure(pid)
                if kind == "other":
                    part["other_comms"][comm[pid]] = part["other_comms"].get(comm[pid], 0) + 1
        out[label] = part
    return out


def pss(specs):
    print(json.dumps(trees(specs, pss_kb)))


def cpu(specs):
    out = trees(specs, ticks)
    out["machine"] = machine_ticks()
    out["time"] = time.time()
    out["hz"] = os.sysconf("SC_CLK_TCK")
    print(json.dumps(out))



def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]


def event_time(text):
    whole, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)


def agents(directory):
    runs, problems = [], []
    for path in sorted(glob.glob(directory + "/*.out")):
        line = next((l for l in open(path) if l.startswith("{")), None)
        if line is None:
            err = open(path[:-4] + ".err").read().strip().splitlines()
            problems.append("%s: no result (%s)" % (os.path.basename(path), err[-1] if err else "no output"))
            continue
        runs.append(json.loads(line))
    return runs, problems


def latency(values):
    return {"n": len(values), "p50_us": pct(values, 0.5), "p90_us": pct(values, 0.9),
            "p99_us": pct(values, 0.99), "max_us": max(values) if values else None}


def summarize(runs, seconds):
    merged = {k: [x for r in runs for x in r[k]] for k in ("allowed", "denied", "approval", "first")}
    errors = [e for r in runs for e in r["errors"]]
    done = sum(len(v) for v in merged.values())
    return {"agents": len(runs), "requests": done, "requests_per_s": done / seconds,
            "allowed": latency(merged["allowed"]), "denied": latency(merged["denied"]),
            "approval": latency(merged["approval"]), "first": latency(merged["first"]),
            "errors": len(errors),
            "error_examples": errors[:5], "late_agents": sum(1 for r in runs if r["late_ms"] > 0),
            "reconnects": sum(r["reconnects"] for r in runs)}


def exit_codes(path):
    codes = {}
    if os.path.exists(path):
        for line in open(path):
            codes[line.strip()] = codes.get(line.strip(), 0) + 1
    return codes


def cpu_use(prefix, requests_between):
    """CPU per request of each tree and category between the two samples, and how busy
    the machine was; requests_between(t0, t1) counts the requests in between."""
    c0, c1 = json.load(open(prefix + "-cpu0.json")), json.load(open(prefix + "-cpu1.json"))
    n = requests_between(c0["time"], c1["time"])
    hz = c0["hz"]
    out = {"requests": n, "seconds": c1["time"] - c0["time"], "ms_per_request": {}}
    for label in c0:
        if label in ("machine", "time", "hz"):
            continue
        for kind in ("roots", "agent", "other"):
            d = c1[label][kind]["sum"] - c0[label][kind]["sum"]
            if c0[label][kind]["count"] or c1[label][kind]["count"]:
                out["ms_per_request"]["%s.%s" % (label, kind)] = d / hz * 1000 / max(n, 1)
    m0, m1 = c0["machine"], c1["machine"]
    total = max(m1["total"] - m0["total"], 1)
    out["machine_busy"] = 1 - (m1["idle"] - m0["idle"] + m1["iowait"] - m0["iowait"]) / total
    out["machine_iowait"] = (m1["iowait"] - m0["iowait"]) / total
    out["machine_system"] = (m1["system"] - m0["system"]) / total
    return out


def cpu_line(c):
    parts = ", ".join("%s %.2f" % (k, v) for k, v in sorted(c["ms_per_request"].items()) if v >= 0.005)
    return "  CPU ms per request: %s; machine busy %.0f%% (system %.0f%%, iowait %.0f%%)" % (
        parts, 100 * c["machine_busy"], 100 * c["machine_system"], 100 * c["machine_iowait"])


def report(work, tasks, seconds):
    res = {"machine": open(work + "/machine.txt").read().strip().splitlines(), "tasks": tasks,
           "seconds": seconds}
    lines = []
    if os.path.exists(work + "/as-meta.json"):
        meta = json.load(open(work + "/as-meta.json"))
        runs, problems = agents(work + "/as")
        a = summarize(runs, seconds)
        a.update(meta)
        a["problems"] = problems
        a["exit_codes"] = exit_codes(work + "/as-codes.txt")
        a["ramp"] = json.load(open(work + "/as-ramp.json"))
        a["pss"] = json.load(open(work + "/as-pss.json"))
        a["serve_fds"] = int(open(work + "/as-serve-fds.txt").read().strip() or 0)
        # Decisions: every http_request event the gateways wrote in the load phase.
        window = (meta["start_at"], meta["start_at"] + seconds)
        counts, total, times = {}, 0, []
        for line in open(work + "/decisions.jsonl"):
            e = json.loads(line)["event"]
            total += 1
            t = event_time(e["time"])
            times.append(t)
            if window[0] <= t < window[1]:
                counts[e.get("decision", "-")] = counts.get(e.get("decision", "-"), 0) + 1
        a["cpu"] = cpu_use(work + "/as", lambda t0, t1: sum(1 for t in times if t0 <= t < t1))
        a["decisions_total"] = total
        a["decisions_in_window"] = counts
        a["decisions_per_s"] = sum(counts.values()) / seconds
        # Approvals: the server's records and the approver's view.
        records = json.load(open(work + "/approvals.json"))
        a["approvals_recorded"] = {s: sum(1 for r in records if r["state"] == s)
                                   for s in ("pending", "approved", "denied", "timed_out")}
        waits = [event_time(r["decided_at"]) - event_time(r["requested_at"])
                 for r in records if r.get("decided_at")]
        a["approval_requested_to_decided_s"] = {"p50": pct(waits, 0.5), "max": max(waits) if waits else None}
        seen = [json.loads(l) for l in open(work + "/approver.jsonl") if l.startswith("{")]
        a["approver_event_to_seen_s"] = {"p50": pct([s["event_to_seen"] for s in seen], 0.5),
                                         "max": max((s["event_to_seen"] for s in seen), default=None)}
        a["verify"] = open(work + "/verify.txt").read().strip()
        res["agentspace"] = a
    if os.path.exists(work + "/bw-meta.json"):
        runs, problems = agents(work + "/bw")
        b = summarize(runs, seconds)
        b.update(json.load(open(work + "/bw-meta.json")))
        b["problems"] = problems
        b["exit_codes"] = exit_codes(work + "/bw-codes.txt")
        b["pss"] = json.load(open(work + "/bw-pss.json"))
        b["cpu"] = cpu_use(work + "/bw", lambda t0, t1: int(b["requests_per_s"] * (t1 - t0)))
        res["bwrap"] = b
    json.dump(res, open(work + "/results.json", "w"), indent=1)

    ms = lambda us: "-" if us is None else "%.1f" % (us / 1000)
    kib = lambda kb, n: kb / max(n, 1) / 1024
    a, b = res.get("agentspace"), res.get("bwrap")
    for m in res["machine"]:
        lines.append(m)
    if a:
        r = a["ramp"]
        lines.append("")
        lines.append("agentspace: %d tasks, %d agents reported, exit codes %s, %d late, %d errors, %d reconnects"
                     % (tasks, a["agents"], a["exit_codes"], a["late_agents"], a["errors"], a["reconnects"]))
        lines.append("  start: %d running after %s s (p50 %.1f s, ramp %.0f s)" % (
            r["running"], "%.1f" % r["all_running_after"] if r["all_running_after"] else "never",
            pct(r["seconds_to_running"], 0.5) or 0, r["ramp"]))
        lines.append("  decisions in the load phase: %d (%s) = %.0f/s; agents' requests %.0f/s"
                     % (sum(a["decisions_in_window"].values()), a["decisions_in_window"],
                        a["decisions_per_s"], a["requests_per_s"]))
        for k in ("allowed", "denied", "approval", "first"):
            l = a[k]
            lines.append("  %-9s n=%-7d p50 %8s ms  p90 %8s ms  p99 %8s ms  max %8s ms"
                         % (k, l["n"], ms(l["p50_us"]), ms(l["p90_us"]), ms(l["p99_us"]), ms(l["max_us"])))
        lines.append("  approvals recorded %s; requested->decided p50 %s s; approver saw the event after p50 %s s"
                     % (a["approvals_recorded"], a["approval_requested_to_decided_s"]["p50"],
                        a["approver_event_to_seen_s"]["p50"]))
        p = a["pss"]
        lines.append("  PSS per task: agent %.1f MiB + Agent Space %.1f MiB (%d processes: %s); server %.1f MiB in all (%d fds); clients %.1f MiB each"
                     % (kib(p["server"]["agent"]["sum"], tasks), kib(p["server"]["other"]["sum"], tasks),
                        p["server"]["other"]["count"], p["server"]["other_comms"],
                        p["server"]["roots"]["sum"] / 1024, a["serve_fds"],
                        kib(p["clients"]["roots"]["sum"], p["clients"]["roots"]["count"])))
        lines.append(cpu_line(a["cpu"]))
        lines.append("  " + a["verify"].splitlines()[-1] if a["verify"] else "")
        for problem in a["problems"][:5]:
            lines.append("  problem: " + problem)
    if b:
        lines.append("")
        lines.append("bwrap: %d sandboxes, %d agents reported, exit codes %s, %d late, %d errors"
                     % (tasks, b["agents"], b["exit_codes"], b["late_agents"], b["errors"]))
        lines.append("  agents' requests %.0f/s" % b["requests_per_s"])
        for k in ("allowed", "denied", "approval", "first"):
            l = b[k]
            lines.append("  %-9s n=%-7d p50 %8s ms  p90 %8s ms  p99 %8s ms  max %8s ms"
                         % (k, l["n"], ms(l["p50_us"]), ms(l["p90_us"]), ms(l["p99_us"]), ms(l["max_us"])))
        p = b["pss"]["sandboxes"]
        lines.append(cpu_line(b["cpu"]))
        lines.append("  PSS per task: agent %.1f MiB + bwrap %.1f MiB (%d processes)"
                     % (kib(p["agent"]["sum"], tasks), kib(p["other"]["sum"] + p["roots"]["sum"], tasks),
                        p["other"]["count"] + p["roots"]["count"]))
    if a and b:
        ratio = lambda x, y: "-" if not x or not y else "%.2f" % (x / y)
        pa, pb = a["pss"]["server"], b["pss"]["sandboxes"]
        mem_a = (pa["agent"]["sum"] + pa["other"]["sum"]) / tasks
        mem_b = (pb["agent"]["sum"] + pb["other"]["sum"] + pb["roots"]["sum"]) / tasks
        lines.append("")
        lines.append("ratios agentspace / bwrap: requests/s %s; allowed p50 %s, p99 %s; PSS per task %s"
                     % (ratio(a["requests_per_s"], b["requests_per_s"]),
                        ratio(a["allowed"]["p50_us"], b["allowed"]["p50_us"]),
                        ratio(a["allowed"]["p99_us"], b["allowed"]["p99_us"]), ratio(mem_a, mem_b)))
    print("\n".join(lines))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ramp":
        ramp(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    elif cmd == "pss":
        pss(sys.argv[2:])
    elif cmd == "cpu":
        cpu(sys.argv[2:])
    elif cmd == "report":
        report(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: serve-stats.py ramp|pss|report ...")
