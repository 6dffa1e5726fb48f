#!/usr/bin/env python3
"""Network benchmark: host → container HTTP through a published port, bulkhead vs crun.

In one run, inside network namespaces this script creates (nothing touches the host's interfaces):
  - bulkhead: `run -d -p 18080:80 busybox httpd` on the default bridge; the load tool on the host
    side connects to 127.0.0.1:18080 (through bulkhead's port proxy, TAP, virtio-net under TCG);
  - crun: the same busybox httpd in a shared-kernel container on a veth pair, reached directly.
Both print the median connect+GET latency (new connection each time, N requests) and the
download throughput of a 32 MiB file.

Needs root, crun, and the guest with process support. Usage: bench/net.py [N]
"""
import json, os, shutil, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
NS, CRUN_NS = f"bh-bench-{os.getpid()}", f"bh-bench-crun-{os.getpid()}"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def rootfs(path):
    os.makedirs(f"{path}/bin"); os.makedirs(f"{path}/www"); os.makedirs(f"{path}/etc")
    shutil.copy("/bin/busybox", f"{path}/bin/busybox")
    for applet in ("sh", "httpd", "sleep"):
        os.symlink("busybox", f"{path}/bin/{applet}")
    open(f"{path}/www/index.html", "w").write("hello\n")
    with open(f"{path}/www/big", "wb") as f:
        f.write(b"x" * (32 << 20))


def load(ns, host, port):
    return sh("ip", "netns", "exec", ns, sys.executable, f"{REPO}/bench/net_load.py", host, str(port), str(N))


def main():
    kernel_dir = sh(f"{REPO}/kernel/build")
    guest = os.environ.get("BULKHEAD_GUEST") or sh(f"{REPO}/scripts/build-guest")
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "bulkhead-cli"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", f"{REPO}/target")
    bulkhead = ["ip", "netns", "exec", NS, f"{target}/release/bulkhead"]
    sh("ip", "netns", "add", NS); sh("ip", "netns", "add", CRUN_NS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, BULKHEAD_ROOT=f"{tmp}/store", BULKHEAD_RUN_ROOT=f"{tmp}/run", BULKHEAD_GUEST=guest)
            sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
            rootfs(f"{tmp}/bundle/rootfs")
            sh("tar", "-C", f"{tmp}/bundle/rootfs", "-cf", f"{tmp}/busybox.tar", ".")
            sh(*bulkhead, "kernel", "import", f"{kernel_dir}/vmlinux", env=env)
            sh(*bulkhead, "import", f"{tmp}/busybox.tar", "busybox", env=env)
            cid = sh(*bulkhead, "run", "-d", "-p", "18080:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/www", env=env)
            time.sleep(1)
            vm = load(NS, "127.0.0.1", 18080)
            sh(*bulkhead, "rm", "-f", cid, env=env)

            # crun: the same server on a veth pair into its own namespace.
            sh("ip", "netns", "exec", NS, "ip", "link", "add", "bhb0", "type", "veth", "peer", "name", "eth0", "netns", CRUN_NS)
            sh("ip", "netns", "exec", NS, "sh", "-c", "ip addr add 10.251.0.1/24 dev bhb0 && ip link set bhb0 up")
            sh("ip", "netns", "exec", CRUN_NS, "sh", "-c", "ip link set lo up && ip addr add 10.251.0.2/24 dev eth0 && ip link set eth0 up")
            sh("crun", "spec", cwd=f"{tmp}/bundle")
            spec = json.load(open(f"{tmp}/bundle/config.json"))
            spec["process"]["terminal"] = False
            spec["process"]["args"] = ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
            spec["root"]["readonly"] = True
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
            spec["linux"]["namespaces"].append({"type": "network", "path": f"/var/run/netns/{CRUN_NS}"})
            json.dump(spec, open(f"{tmp}/bundle/config.json", "w"))
            name = f"bh-bench-{os.getpid()}"
            sh("unshare", "-m", "sh", "-c", f"umount /sys/fs/cgroup/unified 2>/dev/null; crun run -d -b {tmp}/bundle {name} </dev/null >/dev/null 2>&1")
            try:
                time.sleep(0.5)
                native = load(NS, "10.251.0.2", 80)
            finally:
                subprocess.run(["crun", "delete", "-f", name], capture_output=True)
        print(f"bulkhead (VM, TCG, -p via proxy): {vm}")
        print(f"crun (shared kernel, veth):       {native}")
    finally:
        subprocess.run(["ip", "netns", "del", NS]); subprocess.run(["ip", "netns", "del", CRUN_NS])


if __name__ == "__main__":
    main()
