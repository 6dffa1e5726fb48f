#!/usr/bin/env python3
"""Container benchmark: `bulkhead run --rm busybox true` end to end vs the boot alone vs crun.

In one run (N times each, default 10):
  - `bulkhead run --rm busybox true`, wall time of the whole command;
  - boot-to-ready of a bare VM (`bulkhead check --format json`), the floor a run stands on;
  - `crun run` of the same busybox root filesystem (the shared-kernel reference);
  - `bulkhead exec` round trip (`true`) into a running container;
then 20 containers at once (all must be running), the monitor's RSS, and the guest and host
memory per idle container. Usage: bench/run.py [N]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
CONCURRENT = 20


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def timed(args, env):
    start = time.monotonic()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return (time.monotonic() - start) * 1e3


def busybox_rootfs(path):
    os.makedirs(f"{path}/bin")
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        os.makedirs(f"{path}/{d}")
    shutil.copy("/bin/busybox", f"{path}/bin/busybox")
    for applet in ("sh", "true", "sleep", "cat"):
        os.symlink("busybox", f"{path}/bin/{applet}")
    with open(f"{path}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")


def crun_runs(bundle, n):
    """Milliseconds of `crun run` of /bin/true in `bundle` (rootfs/ already there), n times, in a
    private mount namespace without the hybrid cgroup2 mount crun trips over on this host."""
    sh("crun", "spec", cwd=bundle)
    spec = json.load(open(f"{bundle}/config.json"))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    json.dump(spec, open(f"{bundle}/config.json", "w"))
    script = (f"umount /sys/fs/cgroup/unified 2>/dev/null; for i in $(seq {n}); do s=$(date +%s%N); "
              f"crun run -b {bundle} bench-$$-$i >/dev/null; e=$(date +%s%N); echo $(( (e-s)/1000 )); done")
    return [int(x) / 1e3 for x in sh("unshare", "-m", "sh", "-c", script).split()]


def smaps(pid):
    out = {}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def build():
    """Builds bulkhead (release) and the guest kernel; returns the binary's path and the kernel
    directory."""
    kernel_dir = sh(f"{REPO}/kernel/build")
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "bulkhead-cli"], cwd=REPO, check=True)
    return f"{REPO}/target/release/bulkhead", kernel_dir


def busybox_store(bulkhead, kernel_dir, tmp):
    """A store under `tmp` with the kernel and a `busybox` image whose root filesystem is
    `tmp`/bundle/rootfs (for crun too); returns the environment that uses it. No network, like
    the crun baseline (and nothing made on the host's interfaces)."""
    guest = sh(f"{REPO}/scripts/build-guest")
    env = dict(os.environ, BULKHEAD_ROOT=f"{tmp}/store", BULKHEAD_RUN_ROOT=f"{tmp}/run", BULKHEAD_GUEST=guest,
               BULKHEAD_NETWORK="none")
    rootfs = f"{tmp}/bundle/rootfs"
    busybox_rootfs(rootfs)
    sh("tar", "-C", rootfs, "-cf", f"{tmp}/busybox.tar", ".")
    subprocess.run([bulkhead, "kernel", "import", f"{kernel_dir}/vmlinux"], env=env, check=True, capture_output=True)
    subprocess.run([bulkhead, "import", f"{tmp}/busybox.tar", "busybox"], env=env, check=True, capture_output=True)
    return env


def main():
    bulkhead, kernel_dir = build()
    med = statistics.median

    with tempfile.TemporaryDirectory() as tmp:
        env = busybox_store(bulkhead, kernel_dir, tmp)
        # Warm: the root disk, the template and the image's specialisation.
        subprocess.run([bulkhead, "run", "--rm", "busybox", "true"], env=env, check=True)

        runs, boots, execs = [], [], []
        for _ in range(N):
            runs.append(timed([bulkhead, "run", "--rm", "busybox", "true"], env))
            out = subprocess.run([bulkhead, "check", "--format", "json"], env=env, check=True, capture_output=True, text=True)
            boots.append(json.loads(out.stdout)["phases"]["boot_to_ready_ms"])

        crun = crun_runs(f"{tmp}/bundle", N)

        cid = sh(bulkhead, "run", "-d", "busybox", "sleep", "100000", env=env)
        for _ in range(N):
            execs.append(timed([bulkhead, "exec", cid, "true"], env))
        stats = json.loads(sh(bulkhead, "stats", "--no-stream", "--format", "json", cid, env=env))[0]
        sh(bulkhead, "rm", "-f", cid, env=env)

        start = time.monotonic()
        ids = [sh(bulkhead, "run", "-d", "busybox", "sleep", "100000", env=env) for _ in range(CONCURRENT)]
        started_s = time.monotonic() - start
        time.sleep(2)
        running = sh(bulkhead, "ps", "-q", env=env).split()
        per = []
        for cid in ids:
            s = json.loads(sh(bulkhead, "stats", "--no-stream", "--format", "json", cid, env=env))[0]
            vm_pid = json.loads(sh(bulkhead, "inspect", cid, env=env))[0]["VM"]["Pid"]
            per.append((s, smaps(vm_pid)))
        for cid in ids:
            subprocess.run([bulkhead, "rm", "-f", cid], env=env, check=True, capture_output=True)

    print(f"container benchmark, {N} runs each (TCG), kernel {os.path.basename(kernel_dir)}")
    print(f"{'':44}{'median':>10}{'min':>10}{'max':>10}")
    for name, xs in [("bulkhead run --rm busybox true", runs), ("boot-to-ready (bulkhead check)", boots),
                     ("crun run (shared kernel)", crun), ("bulkhead exec true (round trip)", execs)]:
        print(f"{name:44}{med(xs):>8.1f}ms{min(xs):>8.1f}ms{max(xs):>8.1f}ms")
    print(f"ratio run/boot-to-ready: {med(runs) / med(boots):.3f} (target <= 1.25)")
    print(f"monitor RSS: {stats['MonitorRSSBytes'] / 2**20:.1f} MiB (target < 10 MiB)")
    print(f"{CONCURRENT} containers started in {started_s:.1f} s; running afterwards: {len(running)}/{CONCURRENT}")
    guest_used = med([s['MemoryUsedBytes'] for s, _ in per]) / 2**20
    rss = med([m.get('Rss', 0) for _, m in per]) / 1024
    private = med([m.get('Private_Clean', 0) + m.get('Private_Dirty', 0) for _, m in per]) / 1024
    shared = med([m.get('Shared_Clean', 0) + m.get('Shared_Dirty', 0) for _, m in per]) / 1024
    pss = med([m.get('Pss', 0) for _, m in per]) / 1024
    print(f"per idle container (median of {CONCURRENT}): guest used {guest_used:.1f} MiB; "
          f"QEMU host RSS {rss:.1f} MiB (private {private:.1f}, shared {shared:.1f}, PSS {pss:.1f})")


if __name__ == "__main__":
    main()
