//! Network namespaces for tests: every bridge, TAP, veth and firewall rule a test makes lives in
//! a namespace the test created, and goes when the namespace is deleted (also on panic).
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("bh-test-{}-{n}-{tag}", std::process::id());
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics on failure; returns stdout.
    pub fn exec(&self, command: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, command.replace('\'', "'\\''")))
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it opens and commands it
    /// spawns live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap();
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    f()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `sh -c command`; panics with its output on failure.
pub fn sh(command: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(
        out.status.success(),
        "{command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Links `a` and `b` with a veth pair: `a_if` in `a` with `a_addr`, `b_if` in `b` with `b_addr`.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.exec(&format!("ip link add {a_if} type veth peer name {b_if} netns {}", b.name));
    a.exec(&format!("ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"));
    b.exec(&format!("ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"));
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
