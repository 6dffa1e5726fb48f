#!/usr/bin/env python3
"""Boot benchmark: bulkhead's VM to agent-ready vs raw QEMU with the same kernel and a trivial init.

In one run, N times each (default 10):
  (a) `bulkhead check --format json`: boot-to-ready measured on the host (QEMU spawn to the agent's
      Ready), and the guest's own kernel-to-init time;
  (b) raw QEMU, same kernel and machine options, an initramfs holding only a static init that
      prints its boot time and powers off: wall time from spawn to QEMU exit, and kernel-to-init.
Prints medians and the ratio (a)/(b). Usage: bench/boot.py [N]
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def newc(entries):
    """A minimal cpio newc archive: entries are (name, mode, data, rdevmajor, rdevminor)."""
    out = bytearray()
    for ino, (name, mode, data, rmaj, rmin) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        name_b = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name_b), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name_b
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def main():
    kernel_dir = sh(f"{REPO}/kernel/build")
    vmlinux = f"{kernel_dir}/vmlinux"
    guest = sh(f"{REPO}/scripts/build-guest")
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "bulkhead-cli"], cwd=REPO, check=True)
    bulkhead = f"{REPO}/target/release/bulkhead"

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BULKHEAD_ROOT=f"{tmp}/store", BULKHEAD_RUN_ROOT=f"{tmp}/run", BULKHEAD_GUEST=guest)
        subprocess.run([bulkhead, "kernel", "import", vmlinux], env=env, check=True, capture_output=True)

        init = f"{tmp}/raw-init"
        sh("gcc", "-static", "-O2", "-o", init, f"{REPO}/bench/raw-init.c")
        initrd = f"{tmp}/raw.cpio"
        with open(init, "rb") as f:
            body = f.read()
        with open(initrd, "wb") as f:
            f.write(newc([("dev", 0o040755, b"", 0, 0), ("dev/console", 0o020600, b"", 5, 1), ("init", 0o100755, body, 0, 0)]))

        ours, ours_k2i = [], []
        raw, raw_k2i = [], []
        subprocess.run([bulkhead, "check"], env=env, check=True, capture_output=True)  # warm caches
        for _ in range(N):
            out = subprocess.run([bulkhead, "check", "--format", "json"], env=env, check=True, capture_output=True, text=True)
            phases = json.loads(out.stdout)["phases"]
            ours.append(phases["boot_to_ready_ms"])
            ours_k2i.append(phases["kernel_to_init_ms"])

            console = f"{tmp}/raw-console.log"
            cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on",
                   "-accel", "tcg", "-cpu", "max", "-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config",
                   "-display", "none", "-no-reboot", "-kernel", vmlinux, "-initrd", initrd,
                   "-append", "console=ttyS0 reboot=t panic=-1 quiet nokaslr random.trust_cpu=on 8250.nr_uarts=1 rdinit=/init",
                   "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console"]
            start = time.monotonic()
            subprocess.run(cmd, check=True)
            raw.append((time.monotonic() - start) * 1e3)
            m = re.search(r"raw-init boottime_ns=(\d+)", open(console, errors="replace").read())
            raw_k2i.append(int(m.group(1)) / 1e6 if m else float("nan"))

    med = statistics.median
    print(f"boot benchmark, {N} runs each, accelerator tcg, kernel {os.path.basename(kernel_dir)}")
    print(f"{'':36}{'median':>10}{'min':>10}{'max':>10}")
    for name, xs in [("bulkhead boot-to-ready (host)", ours), ("  of which kernel-to-init (guest)", ours_k2i),
                     ("raw QEMU spawn-to-exit (host)", raw), ("  of which kernel-to-init (guest)", raw_k2i)]:
        print(f"{name:36}{med(xs):>8.1f}ms{min(xs):>8.1f}ms{max(xs):>8.1f}ms")
    print(f"ratio bulkhead/raw: {med(ours) / med(raw):.3f} (target <= 1.10); raw boot under 1.0 s: {med(raw) < 1000}")


if __name__ == "__main__":
    main()
