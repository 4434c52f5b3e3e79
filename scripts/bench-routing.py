#!/usr/bin/env python3
"""Summary of scripts/bench.sh routing: bench-routing.py BENCH_DIR MODE...

For each bus mode: the units each gateway's bus received and Redis's CPU
(used_cpu_sys + used_cpu_user), both per 10 000 publishes of the fixed-rate
run, then the peak and the latency at half of it.
"""
import json
import sys


def snapshot(path):
    units, cpu, at = {}, 0.0, 0.0
    with open(path) as f:
        for line in f:
            w = line.split()
            if w[0] == "units":
                units[int(w[1])] = float(w[2])
            elif w[0] == "redis_cpu":
                cpu = float(w[1])
            elif w[0] == "at":
                at = float(w[1])
    return units, cpu, at


def main():
    d, modes = sys.argv[1], sys.argv[2:]
    rows = []
    for m in modes:
        _, ci, ti = snapshot(f"{d}/routing-{m}.idle")
        u0, c0, t0 = snapshot(f"{d}/routing-{m}.before")
        u1, c1, t1 = snapshot(f"{d}/routing-{m}.after")
        idle_per_s = (c0 - ci) / (t0 - ti)
        fixed = json.load(open(f"{d}/routing-{m}.json"))["steps"][-1]
        peak = json.load(open(f"{d}/routing-max-{m}.json"))["steps"][-1]
        half = json.load(open(f"{d}/routing-half-{m}.json"))["steps"][-1]
        pubs = fixed["published"]
        per = 10000 / pubs if pubs else 0
        units = [(u1[k] - u0.get(k, 0)) * per for k in sorted(u1)]
        serving = units[1:]
        rows.append({
            "mode": m, "publishes": pubs, "delivered_pct": fixed["delivered_pct"],
            "units_publisher": units[0],
            "units_serving_avg": sum(serving) / len(serving) if serving else 0,
            "units_serving_max": max(serving) if serving else 0,
            "units_all": sum(units),
            "redis_cpu_ms": (c1 - c0) * 1000 * per,
            "redis_idle_ms_per_s": idle_per_s * 1000,
            "redis_net_cpu_ms": max(0.0, (c1 - c0) - idle_per_s * (t1 - t0)) * 1000 * per,
            "peak_per_s": peak["published_per_s"],
            "half_rate": half["rate"], "half_p50_ms": half["latency"]["p50_ms"], "half_p99_ms": half["latency"]["p99_ms"],
            "half_delivered_pct": half["delivered_pct"],
        })
    print("\nper 10 000 publishes of the fixed-rate run (units the bus handed each gateway; Redis CPU ms,")
    print("measured, and net of its idle cost over the same time):")
    print(f"{'mode':<11} {'publishes':>9} {'deliv%':>7} {'gw0 (publisher)':>15} {'gw1-7 avg':>10} {'gw1-7 max':>10} {'all 8':>8} {'redis ms':>9} {'net ms':>7} {'idle ms/s':>9}")
    for r in rows:
        print(f"{r['mode']:<11} {r['publishes']:>9} {r['delivered_pct']:>7.1f} {r['units_publisher']:>15.0f} {r['units_serving_avg']:>10.0f} "
              f"{r['units_serving_max']:>10.0f} {r['units_all']:>8.0f} {r['redis_cpu_ms']:>9.0f} {r['redis_net_cpu_ms']:>7.0f} {r['redis_idle_ms_per_s']:>9.1f}")
    print("\nclosed-loop peak, then latency at half of it (publish through gateway 0 to a subscriber on another gateway):")
    print(f"{'mode':<11} {'peak/s':>8} {'half/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'deliv%':>7}")
    for r in rows:
        print(f"{r['mode']:<11} {r['peak_per_s']:>8.0f} {r['half_rate']:>7.0f} {r['half_p50_ms']:>7.2f} {r['half_p99_ms']:>7.2f} {r['half_delivered_pct']:>7.1f}")
    json.dump(rows, open(f"{d}/routing-summary.json", "w"), indent=1)


if __name__ == "__main__":
    main()
