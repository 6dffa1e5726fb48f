//! Networking end to end: `bulkhead` runs inside a network namespace each test creates (so the
//! bridge, the TAPs, QEMU and the firewall rules all live there), with an "outside" namespace on
//! a veth standing for the world. No test touches the host's interfaces; no packet leaves.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{env_path, text, Env};

/// A network namespace, deleted on drop (also when the test panics).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("bh-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        sh(&format!("ip netns add {name} && ip netns exec {name} ip link set lo up"));
        Netns(name)
    }

    fn exec(&self, command: &str) -> Output {
        Command::new("ip").args(["netns", "exec", &self.0, "sh", "-c", command]).output().unwrap()
    }

    /// What is left of bulkhead in the namespace: links and firewall rules.
    fn leftovers(&self) -> String {
        let out = self.exec("ip -o link show; iptables-save");
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains("bulkhead") || l.contains("bht"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(command: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `bulkhead ARGS` inside `ns`, with `env`'s store.
fn bh(env: &Env, ns: &Netns, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_bulkhead")])
        .args(args)
        .env("BULKHEAD_ROOT", env.root())
        .env("BULKHEAD_RUN_ROOT", env.dir.path().join("run"))
        .env("BULKHEAD_GUEST", env_path("BULKHEAD_GUEST"))
        .env_remove("BULKHEAD_NETWORK")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(env: &Env, ns: &Netns, args: &[&str]) -> String {
    let out = bh(env, ns, args);
    assert!(out.status.success(), "bulkhead {args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn inspect(env: &Env, ns: &Netns, name: &str) -> serde_json::Value {
    let out: serde_json::Value = serde_json::from_str(&ok(env, ns, &["inspect", name])).unwrap();
    out[0].clone()
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A shell command for inside a container that prints the body of `http://{host}/` (one line)
/// and fails when nothing answers. busybox nc rather than busybox wget: Debian 12's static
/// busybox wget crashes.
fn fetch(host: &str, seconds: u32) -> String {
    format!("set -o pipefail; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {seconds} {host} 80 | tail -n 1 | grep .")
}

/// An HTTP GET from inside `ns` (through `ip netns exec` and curl on the host side).
fn get(ns: &Netns, url: &str) -> Result<String, String> {
    let out = ns.exec(&format!("curl -sS -m 5 {url}"));
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn network_verbs_leases_and_address_reuse() {
    if !root() {
        return eprintln!("skipped: needs root");
    }
    let env = Env::new();
    let ns = Netns::new();
    let id = ok(&env, &ns, &["network", "create", "--subnet", "10.123.0.0/24", "front"]);
    assert_eq!(id.len(), 12);
    let ls = ok(&env, &ns, &["network", "ls"]);
    assert!(ls.contains("front") && ls.contains("10.123.0.0/24") && ls.contains("bridge"), "{ls}");
    let clash = bh(&env, &ns, &["network", "create", "--subnet", "10.123.0.128/25", "back"]);
    assert!(
        text(&clash.stderr).contains("overlaps 10.123.0.0/24 of network front"),
        "{}",
        text(&clash.stderr)
    );

    ok(&env, &ns, &["create", "--name", "a", "--network", "front", "busybox", "true"]);
    let a = inspect(&env, &ns, "a");
    assert_eq!(a["NetworkSettings"]["IPAddress"], "10.123.0.2");
    assert_eq!(a["NetworkSettings"]["Mode"], "front");
    ok(
        &env,
        &ns,
        &["create", "--name", "b", "--network", "front", "-p", "127.0.0.1:8080:80", "busybox", "true"],
    );
    assert_eq!(inspect(&env, &ns, "b")["NetworkSettings"]["IPAddress"], "10.123.0.3");
    assert_eq!(inspect(&env, &ns, "b")["NetworkSettings"]["Ports"][0], "127.0.0.1:8080:80/tcp");
    let busy = bh(&env, &ns, &["network", "rm", "front"]);
    assert!(
        !busy.status.success() && text(&busy.stderr).contains("active endpoints"),
        "{}",
        text(&busy.stderr)
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&env, &ns, &["network", "inspect", "front"])).unwrap();
    assert_eq!(inspected[0]["containers"].as_array().unwrap().len(), 2);

    ok(&env, &ns, &["rm", "a"]);
    ok(&env, &ns, &["create", "--name", "c", "--network", "front", "busybox", "true"]);
    assert_eq!(
        inspect(&env, &ns, "c")["NetworkSettings"]["IPAddress"],
        "10.123.0.2",
        "a's address is reused"
    );
    ok(&env, &ns, &["container", "prune"]);
    ok(&env, &ns, &["network", "rm", "front"]);
    let bad = bh(&env, &ns, &["create", "--network", "nosuch", "busybox", "true"]);
    assert!(text(&bad.stderr).contains("network nosuch not found"), "{}", text(&bad.stderr));
    let none_ports = bh(&env, &ns, &["create", "--network", "none", "-p", "80", "busybox", "true"]);
    assert!(text(&none_ports.stderr).contains("--network none"), "{}", text(&none_ports.stderr));
    assert_eq!(ns.leftovers(), "");
}

#[test]
fn published_port_names_isolation_and_no_leftovers() {
    if !root() {
        return eprintln!("skipped: needs root");
    }
    let env = Env::new();
    let ns = Netns::new();
    // An HTTP server in a container, reached through -p from the namespace's loopback and its
    // other address.
    ns.exec("ip link add bhv0 type veth peer name bhv1 && ip addr add 10.200.0.1/24 dev bhv0 && ip link set bhv0 up && ip link set bhv1 up");
    ok(
        &env,
        &ns,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-vm > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    eventually("the server through the port", || get(&ns, "http://127.0.0.1:8080/").is_ok());
    assert_eq!(get(&ns, "http://127.0.0.1:8080/").unwrap(), "hello-from-vm\n");
    assert_eq!(get(&ns, "http://10.200.0.1:8080/").unwrap(), "hello-from-vm\n");

    // The port is taken: a clear error.
    let clash = bh(&env, &ns, &["run", "-d", "--name", "web2", "-p", "8080:80", "busybox", "sleep", "60"]);
    assert!(!clash.status.success());
    assert!(
        text(&clash.stderr).contains("host port 8080/tcp on 0.0.0.0 is already in use"),
        "{}",
        text(&clash.stderr)
    );

    // Containers on one network reach each other by name and address.
    let web_ip = inspect(&env, &ns, "web")["NetworkSettings"]["IPAddress"].as_str().unwrap().to_owned();
    let by_name = ok(&env, &ns, &["run", "--rm", "busybox", "sh", "-c", &fetch("web", 5)]);
    assert_eq!(by_name, "hello-from-vm");
    let by_ip = ok(&env, &ns, &["run", "--rm", "busybox", "sh", "-c", &fetch(&web_ip, 5)]);
    assert_eq!(by_ip, "hello-from-vm");

    // --network none has only lo.
    let links = ok(&env, &ns, &["run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net"]);
    assert_eq!(links, "lo");

    // Two user networks cannot reach each other.
    ok(&env, &ns, &["network", "create", "blue"]);
    ok(&env, &ns, &["network", "create", "green"]);
    ok(
        &env,
        &ns,
        &[
            "run",
            "-d",
            "--name",
            "bweb",
            "--network",
            "blue",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo blue > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let blue_ip = inspect(&env, &ns, "bweb")["NetworkSettings"]["IPAddress"].as_str().unwrap().to_owned();
    let same = ok(&env, &ns, &["run", "--rm", "--network", "blue", "busybox", "sh", "-c", &fetch("bweb", 5)]);
    assert_eq!(same, "blue");
    let across =
        bh(&env, &ns, &["run", "--rm", "--network", "green", "busybox", "sh", "-c", &fetch(&blue_ip, 3)]);
    assert!(!across.status.success(), "green reached blue: {}", text(&across.stdout));

    // Egress with NAT to a server in another namespace.
    let outside = Netns::new();
    sh(&format!("ip netns exec {} ip link add bhup0 type veth peer name bhout0 netns {}", ns.0, outside.0));
    ns.exec(
        "ip addr add 10.250.0.1/24 dev bhup0 && ip link set bhup0 up && ip route add default via 10.250.0.2",
    );
    outside.exec("ip addr add 10.250.0.2/24 dev bhout0 && ip link set bhout0 up");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &outside.0, "busybox", "nc", "-l", "-p", "7000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let egress = ok(
        &env,
        &ns,
        &["run", "--rm", "busybox", "sh", "-c", "echo | nc -w 5 10.250.0.2 7000 && echo reached"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(egress.contains("reached"), "{egress}");

    ok(&env, &ns, &["rm", "-f", "web", "web2", "bweb"]);
    ok(&env, &ns, &["network", "rm", "blue", "green"]);
    assert_eq!(ns.leftovers(), "", "no bridge, TAP or rule is left");
}

#[test]
fn killed_monitor_then_prune_leaves_nothing() {
    if !root() {
        return eprintln!("skipped: needs root");
    }
    let env = Env::new();
    let ns = Netns::new();
    ok(&env, &ns, &["run", "-d", "--name", "victim", "-p", "8081:80", "busybox", "sleep", "1000"]);
    assert!(ns.leftovers().contains("bulkhead0"));
    let pid = inspect(&env, &ns, "victim")["State"]["MonitorPid"].as_u64().unwrap();
    sh(&format!("kill -9 {pid}"));
    eventually("the container to be seen as exited", || {
        inspect(&env, &ns, "victim")["State"]["Running"] == false
    });
    ok(&env, &ns, &["container", "prune"]);
    assert_eq!(ns.leftovers(), "");
}
