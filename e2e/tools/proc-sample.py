#!/usr/bin/env python3
"""Samples every dfdaemon / dragonfly-scheduler process each 0.5 s: peak RSS
(VmHWM), CPU time (utime+stime) and the highest CPU rate over 2 s windows.
Runs until the stop file appears; prints one JSON line per process."""
import json, os, sys, time
stop = sys.argv[1]
hz = os.sysconf("SC_CLK_TCK")
procs = {}
def role(pid):
    try:
        cmd = open(f"/proc/{pid}/cmdline","rb").read().split(b"\0")
    except OSError:
        return None
    exe = os.path.basename(cmd[0].decode(errors="replace")) if cmd and cmd[0] else ""
    args = [c.decode(errors="replace") for c in cmd[1:]]
    if exe == "dragonfly-scheduler":
        return "scheduler"
    if exe == "dfdaemon" and args[:1] == ["run"]:
        return "seed-peer" if "--seed" in args else "dfdaemon"
    return None
while not os.path.exists(stop):
    now = time.monotonic()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        p = procs.get(pid)
        if p is None:
            r = role(pid)
            if r is None:
                procs[pid] = {"role": None}
                continue
            p = procs[pid] = {"role": r, "hwm_kb": 0, "cpu": 0.0, "first": now, "last": now, "hist": [], "max_rate": 0.0}
        if p["role"] is None:
            continue
        try:
            st = open(f"/proc/{pid}/status").read()
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        for line in st.splitlines():
            if line.startswith("VmHWM:"):
                p["hwm_kb"] = max(p["hwm_kb"], int(line.split()[1]))
        f = stat.rsplit(")", 1)[1].split()
        cpu = (int(f[11]) + int(f[12])) / hz
        p["cpu"] = cpu; p["last"] = now
        p["hist"].append((now, cpu))
        p["hist"] = [h for h in p["hist"] if now - h[0] <= 2.0]
        t0, c0 = p["hist"][0]
        if now - t0 >= 1.5:
            p["max_rate"] = max(p["max_rate"], (cpu - c0) / (now - t0))
    time.sleep(0.5)
for pid, p in procs.items():
    if p["role"]:
        life = p["last"] - p["first"]
        print(json.dumps({"pid": pid, "role": p["role"], "peak_rss_mib": round(p["hwm_kb"]/1024, 1),
                          "cpu_s": round(p["cpu"], 2), "alive_s": round(life, 1),
                          "avg_cores": round(p["cpu"]/life, 3) if life > 0 else None,
                          "max_cores_2s": round(p["max_rate"], 2)}))
