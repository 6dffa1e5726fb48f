//! The isolation promise: two containers run at once; one holds a secret in its environment and
//! in a file; the other, as root inside its own VM, finds it nowhere: not in `/proc`, not on its
//! disk, and not in its VM's memory (scanned from the host). The same secret under `crun`, which
//! shares the host kernel, is printed for contrast; that case is allowed to leak.
//!
//! Needs `BULKHEAD_TEST_KERNEL` and `BULKHEAD_GUEST` (set by `scripts/test`).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, Env};

/// Whether `needle` occurs in the writable private memory of process `pid` (guest RAM is one
/// large anonymous mapping of the QEMU process).
fn memory_contains(pid: u64, needle: &[u8]) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut chunk = vec![0u8; 4 << 20];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut at = start;
        while at < end {
            let len = usize::try_from((end - at).min(chunk.len() as u64)).unwrap();
            // Unreadable pages (guards, unmapped holes) are skipped.
            if mem.read_exact_at(&mut chunk[..len], at).is_ok()
                && chunk[..len].windows(needle.len()).any(|w| w == needle)
            {
                return true;
            }
            at += len as u64;
        }
    }
    false
}

fn secret() -> String {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    format!("S3CRET-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn a_neighbour_cannot_find_the_secret() {
    let env = Env::new();
    let secret = secret();
    let keeper = format!("echo {secret} > /root/secret; sleep 100000");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "holder",
        "-e",
        &format!("SECRET={secret}"),
        "busybox",
        "sh",
        "-c",
        &keeper,
    ]);
    env.ok(&["run", "-d", "--name", "snoop", "busybox", "sleep", "100000"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.run(&["exec", "holder", "test", "-f", "/root/secret"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }

    // The neighbour VM's memory does not hold it, while the holder's does (scanned first: the
    // search below necessarily puts the secret into the memory of the VM it runs in).
    let pid = |name: &str| env.inspect(name)["VM"]["Pid"].as_u64().unwrap();
    assert!(
        memory_contains(pid("holder"), secret.as_bytes()),
        "scan failed to find the secret in the holder's VM"
    );
    assert!(!memory_contains(pid("snoop"), secret.as_bytes()), "the secret is in the neighbour VM's memory");
    println!("bulkhead: secret in the holder VM's memory: yes; in the neighbour VM's memory: no; in its /proc or disk: no");
    // The search must not carry the secret itself (its own command line would match): the
    // pattern is assembled from two halves into a file on /dev/shm, outside the searched disk.
    let (left, right) = secret.split_at(secret.len() / 2);
    let search = "printf %s%s \"$L\" \"$R\" > /dev/shm/pattern; \
         cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | grep -c -f /dev/shm/pattern; \
         find / -xdev -type f 2>/dev/null | xargs grep -l -f /dev/shm/pattern 2>/dev/null | wc -l";
    let halves = [format!("L={left}"), format!("R={right}")];
    let exec = |name: &str| {
        let out = env.ok(&["exec", "-u", "0", "-e", &halves[0], "-e", &halves[1], name, "sh", "-c", search]);
        out.split_whitespace().map(|n| n.parse().unwrap()).collect::<Vec<u32>>()
    };
    // The search works: inside the holder it finds the secret in /proc and on disk.
    let own = exec("holder");
    assert!(
        own[0] >= 1 && own[1] >= 1,
        "the search cannot even find the secret in its own container: {own:?}"
    );
    // The neighbour, root in its own VM, finds nothing.
    assert_eq!(exec("snoop"), vec![0, 0], "the neighbour found the secret in /proc or on disk");
    let procs = env.ok(&["exec", "snoop", "sh", "-c", "ls -d /proc/[0-9]* | wc -l"]);
    println!("bulkhead: the neighbour sees {} processes, none of the holder's", procs.trim());

    env.ok(&["rm", "-f", "holder", "snoop"]);

    shared_kernel_contrast(&env, &secret);
}

/// Under crun the container's environment is kernel state of the one shared kernel: anything
/// that can read the host's /proc (the host, or a neighbour given the host pid namespace) sees it.
fn shared_kernel_contrast(env: &Env, secret: &str) {
    let bundle = env.dir.path().join("crun-bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let untar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-xf")
        .arg(common::busybox_tarball())
        .status()
        .unwrap();
    assert!(untar.success());
    if !Command::new("crun").arg("spec").current_dir(&bundle).status().is_ok_and(|s| s.success()) {
        println!("crun: not available, contrast skipped");
        return;
    }
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    spec["process"]["env"].as_array_mut().unwrap().push(format!("SECRET={secret}").into());
    std::fs::write(&config, spec.to_string()).unwrap();
    let name = format!("bulkhead-isolation-{}", std::process::id());
    let crun = |cmd: &str| {
        Command::new("unshare")
            .args(["-m", "sh", "-c", &format!("umount /sys/fs/cgroup/unified 2>/dev/null; {cmd}")])
            .output()
            .unwrap()
    };
    // The detached container inherits no pipe of ours, or waiting for output would never end.
    let errors = env.dir.path().join("crun.err");
    let started = crun(&format!(
        "crun run --detach -b {} {name} </dev/null >/dev/null 2>{}",
        bundle.display(),
        errors.display()
    ));
    if !started.status.success() {
        let why = std::fs::read_to_string(&errors).unwrap_or_default();
        println!("crun: could not start ({}), contrast skipped", why.trim());
        return;
    }
    let visible = Command::new("sh")
        .arg("-c")
        .arg(format!("grep -l {secret} /proc/[0-9]*/environ 2>/dev/null | wc -l"))
        .output()
        .unwrap();
    println!(
        "shared kernel (crun): processes whose /proc environ shows the secret on the shared kernel: {}",
        text(&visible.stdout).trim()
    );
    crun(&format!("crun kill {name} KILL; sleep 0.2; crun delete -f {name} </dev/null >/dev/null 2>&1"));
}
