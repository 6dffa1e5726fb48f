#!/usr/bin/env python3
"""Template benchmark: `bulkhead run --rm busybox true` cold (--no-template) vs from a template,
and `crun run` of the same root filesystem, N times each in one run (default 10); then the host
memory of 10 idle containers restored from a template vs 10 cold-booted ones (RSS split into
private and shared, and PSS). Usage: bench/template.py [N]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import build, busybox_store, crun_runs, smaps, sh, timed  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
IDLE = 10


def mem_available_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def idle_memory(bulkhead, env, extra):
    before = mem_available_kib()
    ids = [sh(bulkhead, "run", "-d", *extra, "busybox", "sleep", "100000", env=env) for _ in range(IDLE)]
    time.sleep(2)
    host_used = (before - mem_available_kib()) / 1024
    rows = []
    for cid in ids:
        pid = json.loads(sh(bulkhead, "inspect", cid, env=env))[0]["VM"]["Pid"]
        rows.append(smaps(pid))
    for cid in ids:
        subprocess.run([bulkhead, "rm", "-f", cid], env=env, check=True, capture_output=True)
    total = lambda key: sum(r.get(key, 0) for r in rows) / 1024
    private = sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rows) / 1024
    shared = sum(r.get("Shared_Clean", 0) + r.get("Shared_Dirty", 0) for r in rows) / 1024
    return total("Rss"), private, shared, total("Pss"), host_used


def allocated(path):
    """Bytes the files under `path` take on disk (they are sparse)."""
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(d, name)).st_blocks * 512
    return total


def page_cache_bytes(paths):
    """Bytes of `paths` in the host's page cache (util-linux `fincore`)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def main():
    bulkhead, kernel_dir = build()
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        env = busybox_store(bulkhead, kernel_dir, tmp)
        start = time.monotonic()
        subprocess.run([bulkhead, "template", "warm", "--network", "none"], env=env, check=True, capture_output=True)
        warm_s = time.monotonic() - start
        subprocess.run([bulkhead, "run", "--rm", "busybox", "true"], env=env, check=True)  # + the image's
        template_bytes = allocated(f"{tmp}/store/templates")

        cold, warm = [], []
        for _ in range(N):
            cold.append(timed([bulkhead, "run", "--rm", "--no-template", "busybox", "true"], env))
            warm.append(timed([bulkhead, "run", "--rm", "busybox", "true"], env))

        crun = crun_runs(f"{tmp}/bundle", N)

        restored_mem = idle_memory(bulkhead, env, [])
        cached = page_cache_bytes([os.path.join(d, "memory") for d, _, files in os.walk(f"{tmp}/store/templates")
                                   if "memory" in files])
        cold_mem = idle_memory(bulkhead, env, ["--no-template"])

    print(f"template benchmark, {N} runs each (TCG); template made in {warm_s:.2f} s; templates on disk "
          f"(memory, state, the image's specialisation) {template_bytes / 2**20:.1f} MiB")
    print(f"{'':44}{'median':>10}{'min':>10}{'max':>10}")
    for name, xs in [("run --rm busybox true, cold (--no-template)", cold),
                     ("run --rm busybox true, from a template", warm),
                     ("crun run (shared kernel)", crun)]:
        print(f"{name:44}{med(xs):>8.1f}ms{min(xs):>8.1f}ms{max(xs):>8.1f}ms")
    print(f"speed-up from the template: {med(cold) / med(warm):.2f}x (target >= 4x); "
          f"template median {med(warm) / 1000:.3f} s (target <= 0.25 s)")
    print(f"template memory files in the page cache, shared by every restored VM: {cached / 2**20:.1f} MiB")
    for name, (rss, private, shared, pss, host) in [(f"{IDLE} idle restored", restored_mem),
                                                     (f"{IDLE} idle cold-booted", cold_mem)]:
        print(f"{name:24} QEMU RSS {rss:8.1f} MiB (private {private:7.1f}, shared {shared:6.1f}), "
              f"PSS {pss:8.1f} MiB; host memory used {host:7.1f} MiB")


if __name__ == "__main__":
    main()
