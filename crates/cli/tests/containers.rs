//! Containers as a Docker user drives them, each in its own real VM.
//!
//! Needs `BULKHEAD_TEST_KERNEL` and `BULKHEAD_GUEST` (set by `scripts/test`).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{text, Env};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn run_returns_the_exit_code() {
    let env = Env::new();
    assert_eq!(env.ok(&["run", "--rm", "busybox", "echo", "hello"]), "hello\n");
    assert_eq!(code(&env.run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])), 3);
    // A signal from outside: the main process is PID 1 of its namespace, which ignores signals
    // sent from inside it (as under Docker), but not SIGKILL from `bulkhead kill`.
    let fg = env.cmd().args(["run", "--rm", "--name", "sig", "busybox", "sleep", "1000"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.run(&["kill", "-s", "KILL", "sig"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the container never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fg.wait_with_output().unwrap().status.code(), Some(137));
    assert_eq!(code(&env.run(&["run", "--rm", "busybox", "sh", "-c", "sh -c 'kill -9 $$'; exit $?"])), 137);
    let out = env.run(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("out\n".into(), "err\n".into()));
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "", "--rm left containers behind");
    // Once `run` returns, the container is exited: it can be removed at once.
    env.ok(&["run", "--name", "done", "busybox", "true"]);
    assert!(env.ok(&["ps", "-a"]).contains("Exited (0)"));
    env.ok(&["rm", "done"]);
    assert!(env.processes().is_empty(), "left running: {:?}", env.processes());
}

#[test]
fn stdin_is_piped_in() {
    let env = Env::new();
    let mut child = env
        .cmd()
        .args(["run", "-i", "--rm", "busybox", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\nthere\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "hi\nthere\n");
}

#[test]
fn fifty_megabytes_of_output_arrive_whole() {
    let env = Env::new();
    let out = env.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "head -c 52428800 /dev/urandom | od -An -v -tx1 | head -c 52428800",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 52_428_800);
    assert!(out.stdout.iter().all(|b| b" 0123456789abcdef\n".contains(b)), "output was damaged");

    // A reader that goes away early ends the command quietly, as it would `cat`.
    let mut cmd = env.cmd();
    cmd.args(["run", "--rm", "busybox", "sh", "-c", "head -c 10000000 /dev/zero | od -An -v"]);
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    let sigpipe = nix::sys::signal::Signal::SIGPIPE as i32;
    assert_eq!(out.status.signal(), Some(sigpipe), "{:?}: {}", out.status, text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn tty_gives_the_process_a_terminal() {
    let env = Env::new();
    let out = env.run(&["run", "-t", "--rm", "busybox", "sh", "-c", "test -t 0 && test -t 1 && stty size"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "24 80");
}

#[test]
fn errors_use_dockers_exit_codes() {
    let env = Env::new();
    let out = env.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code(&out), 127, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no-such-command"), "{}", text(&out.stderr));
    let out = env.run(&["run", "--rm", "busybox", "/data/not-executable"]);
    assert_eq!(code(&out), 126, "{}", text(&out.stderr));
    let out = env.run(&["run", "--rm", "no-such-image"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("no-such-image"), "{}", text(&out.stderr));
    let out = env.run(&["run", "--rm", "--memory", "16m", "busybox", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("at least 64 MiB"), "{}", text(&out.stderr));
    let out = env.run(&["run", "--rm", "--restart", "sometimes", "busybox", "true"]);
    assert_eq!(code(&out), 125);
    // Garbage on the command line: one clear line, exit 125, nothing created.
    for (args, want) in [
        (&["run", "--rm", "--cpus", "lots", "busybox", "true"][..], "invalid --cpus"),
        (&["run", "--rm", "-e", "=x", "busybox", "true"][..], "invalid environment variable"),
        (&["run", "--rm", "--name", "a/b", "busybox", "true"][..], "invalid container name"),
        (&["run", "--rm", "--tmpfs", "relative", "busybox", "true"][..], "invalid --tmpfs"),
        (&["run", "--rm", "--accel", "hvf", "busybox", "true"][..], "unknown accelerator"),
        (
            &["run", "--rm", "--env-file", "/no/such/file", "busybox", "true"][..],
            "reading env file /no/such/file",
        ),
    ] {
        let out = env.run(args);
        assert_eq!(code(&out), 125, "{args:?}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(want) && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
    let out = env.run(&["kill", "-s", "NOPE", "anything"]);
    assert!(text(&out.stderr).contains("invalid signal \"NOPE\""), "{}", text(&out.stderr));
    let out = env.run(&["cp", "here", "there"]);
    assert!(text(&out.stderr).contains("exactly one CONTAINER:PATH"), "{}", text(&out.stderr));
    let out = env.run(&["logs", "nosuch"]);
    assert!(text(&out.stderr).contains("no such container: nosuch"), "{}", text(&out.stderr));
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "", "a refused command left a container");
    env.ok(&["create", "--name", "taken", "busybox", "true"]);
    let out = env.run(&["create", "--name", "taken", "busybox", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("already in use"), "{}", text(&out.stderr));
    assert!(env.processes().is_empty());
}

#[test]
fn image_config_and_process_options_are_honoured() {
    let env = Env::new();
    let out = env.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "-w",
        "/tmp/work",
        "-u",
        "alice",
        "--hostname",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $A $(pwd) $(id -u) $(id -G) $(hostname) $HOME",
    ]);
    assert_eq!(out, "1 /tmp/work 1000 1000 50 box /home/alice\n");
    let out = env.ok(&["run", "--rm", "-u", "1001:50", "busybox", "id"]);
    assert!(out.starts_with("uid=1001(bob) gid=50(staff)"), "{out}");
    let envfile = env.dir.path().join("env");
    std::fs::write(&envfile, "# comment\nB=two\n").unwrap();
    let out = env.ok(&[
        "run",
        "--rm",
        "--env-file",
        envfile.to_str().unwrap(),
        "--entrypoint",
        "/bin/sh",
        "busybox",
        "-c",
        "echo x$B",
    ]);
    assert_eq!(out, "xtwo\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "--memory",
        "192m",
        "--cpus",
        "2",
        "busybox",
        "sh",
        "-c",
        "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2"));
    let kib: u64 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((150_000..=196_608).contains(&kib), "guest memory {kib} KiB for --memory 192m");
}

#[test]
fn detached_lifecycle_logs_exec_top_stats_cp_stop_rm() {
    let env = Env::new();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "busybox",
        "sh",
        "-c",
        "echo started; echo oops >&2; echo data > /state; sleep 1000",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64);
    assert_eq!(env.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert!(env.ok(&["ps"]).contains("web"));
    let ps: serde_json::Value = serde_json::from_str(&env.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(ps[0]["State"], "running");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.ok(&["logs", "web"]).contains("started") {
        assert!(Instant::now() < deadline, "no log output");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = env.run(&["logs", "web"]);
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("started\n".into(), "oops\n".into()));
    // stdout and stderr are separate streams, so which of the two lines is last is not fixed.
    let tail = env.run(&["logs", "-t", "--tail", "1", "web"]);
    let both = text(&tail.stdout) + &text(&tail.stderr);
    assert_eq!(both.lines().count(), 1, "{both}");
    assert!(both.contains("Z started") || both.contains("Z oops"), "{both}");
    assert!(env.ok(&["logs", "-t", "--tail", "2", "web"]).contains("Z started"));

    assert_eq!(env.ok(&["exec", "web", "cat", "/state"]), "data\n");
    assert_eq!(code(&env.run(&["exec", "web", "sh", "-c", "exit 5"])), 5);
    assert_eq!(code(&env.run(&["exec", "web", "nope"])), 127);
    // The exec joins the main process's pid namespace, where the main process (sh, which execs
    // its last command) is PID 1.
    assert!(env.ok(&["exec", "web", "cat", "/proc/1/cmdline"]).starts_with("sleep\x001000"));

    let top = env.ok(&["top", "web"]);
    assert!(top.contains("sleep 1000"), "{top}");
    let stats = env.ok(&["stats", "--no-stream", "--format", "json", "web"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats[0]["MemoryTotalBytes"].as_u64().unwrap() > 100 << 20, "{stats}");
    assert!(
        stats[0]["VMHostRSSBytes"].as_u64().unwrap() > 0 && stats[0]["Pids"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    let host_file = env.dir.path().join("hello.txt");
    std::fs::write(&host_file, "from the host\n").unwrap();
    env.ok(&["cp", host_file.to_str().unwrap(), "web:/tmp/"]);
    assert_eq!(env.ok(&["exec", "web", "cat", "/tmp/hello.txt"]), "from the host\n");
    let back = env.dir.path().join("back.txt");
    env.ok(&["cp", "web:/state", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "data\n");

    let inspect = env.inspect("web");
    assert_eq!(inspect["State"]["Status"], "running");
    assert!(inspect["VM"]["Accelerator"].is_string() && inspect["VM"]["MemoryMiB"] == 256, "{inspect}");
    // Booted cold, the kernel phase was paid; restored from a template, the restore was.
    let phases = &inspect["StartPhases"];
    let booted = phases["kernel_to_init_ms"].as_f64().unwrap() > 0.0;
    let restored = phases["restore_ms"].as_f64().is_some_and(|ms| ms > 0.0);
    assert!(booted || restored, "{inspect}");
    assert!(
        phases["rootfs_ms"].as_f64().unwrap() > 0.0 && phases["process_start_ms"].as_f64().unwrap() > 0.0
    );
    assert!(inspect["StartPath"].as_str().is_some_and(|p| !p.is_empty()), "{inspect}");

    let out = env.run(&["rm", "web"]);
    assert_ne!(code(&out), 0, "removing a running container needs -f");
    // sleep as PID 1 ignores SIGTERM, so stop escalates to SIGKILL after the timeout.
    env.ok(&["stop", "-t", "1", "web"]);
    assert_eq!(env.inspect("web")["State"]["ExitCode"], 137);
    assert_eq!(env.ok(&["wait", "web"]).trim(), "137");
    assert!(env.processes().is_empty(), "{:?}", env.processes());
    env.ok(&["rm", "web"]);
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn writable_layer_survives_restart_and_read_only_refuses_writes() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "keep", "busybox", "sleep", "1000"]);
    env.ok(&["exec", "keep", "sh", "-c", "echo kept > /etc/mine"]);
    env.ok(&["restart", "-t", "0", "keep"]);
    assert_eq!(env.ok(&["exec", "keep", "cat", "/etc/mine"]), "kept\n");
    env.ok(&["rm", "-f", "keep"]);

    let out = env.run(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "busybox",
        "sh",
        "-c",
        "echo x > /scratch/ok && cat /scratch/ok && echo y > /nope",
    ]);
    assert_ne!(code(&out), 0);
    assert_eq!(text(&out.stdout), "x\n");
    assert!(text(&out.stderr).contains("Read-only file system"), "{}", text(&out.stderr));
}

#[test]
fn restart_on_failure_stops_after_the_limit() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo try; exit 1",
    ]);
    assert_eq!(env.ok(&["wait", "flaky"]).trim(), "1");
    let inspect = env.inspect("flaky");
    assert_eq!(inspect["State"]["RestartCount"], 2, "{inspect}");
    assert_eq!(inspect["State"]["Status"], "exited");
    assert_eq!(env.ok(&["logs", "flaky"]), "try\ntry\ntry\n");
}

#[test]
fn a_killed_monitor_is_seen_as_exited_and_rm_cleans_up() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "victim", "busybox", "sleep", "1000"]);
    let pid = env.inspect("victim")["State"]["MonitorPid"].as_u64().unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.processes().is_empty() {
        assert!(Instant::now() < deadline, "QEMU outlived its monitor: {:?}", env.processes());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    let inspect = env.inspect("victim");
    assert!(inspect["State"]["Error"].as_str().unwrap().contains("monitor"), "{inspect}");
    env.ok(&["rm", "victim"]);
    assert!(!env.root().join("containers").read_dir().unwrap().any(|e| e.unwrap().file_name().len() == 64));
}

#[test]
fn concurrent_starts_start_once_and_rm_f_leaves_nothing() {
    let env = Env::new();
    let id = env.ok(&["create", "--name", "racer", "busybox", "sleep", "1000"]);
    let a = env.cmd().args(["start", "racer"]).spawn().unwrap();
    let b = env.cmd().args(["start", "racer"]).spawn().unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let qemus = env.processes().iter().filter(|p| p.contains("qemu-system")).count();
    assert_eq!(qemus, 1, "{:?}", env.processes());
    env.ok(&["rm", "-f", id.trim()]);
    assert!(env.processes().is_empty(), "{:?}", env.processes());
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");
    env.ok(&["run", "-d", "busybox", "true"]);
    let last = env.ok(&["ps", "-a", "-q"]);
    env.ok(&["wait", last.trim()]);
    assert_eq!(env.ok(&["container", "prune"]).lines().count(), 1);
}
