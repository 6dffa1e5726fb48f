//! Container processes in real microVMs: a busybox root disk (erofs or ext4) under an overlay
//! with a writable ext4 disk, then what a user of `docker run`/`docker exec` would check:
//! output, exit codes and signals, stdin, a terminal, users, environment, hostname, start
//! failures, exec into the same namespaces, top, stats, copies, `--read-only` with `--tmpfs`,
//! a big stdout stream, and the writable layer surviving a restart.
//!
//! Needs `BULKHEAD_TEST_KERNEL` and `BULKHEAD_GUEST` (see `scripts/test`), busybox-static,
//! erofs-utils, e2fsprogs and tar on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_proto::{stream_id, ContainerSpec, ExitStatus, Message, ProcessSpec, Stdio, WindowSize};
use bulkhead_runtime::sandbox::{Sandbox, SandboxConfig, REQUEST_TIMEOUT};
use bulkhead_runtime::session::{Event, Session};
use bulkhead_runtime::{guest, Paths};
use bulkhead_vmm::{choose_accel, AccelRequest, Disk, HostFacts};

/// Under TCG everything is slow; this only bounds a hang.
const WAIT: Duration = Duration::from_secs(300);

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "ls", "sleep", "env", "hostname", "pwd", "head", "wc", "tty", "stty", "test",
    "touch", "kill", "true", "false", "mkdir", "rm", "sync", "yes", "dd", "grep",
];

struct Fixture {
    dir: tempfile::TempDir,
    config: SandboxConfig,
}

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} is not set; run the tests through scripts/test"));
    PathBuf::from(value)
}

fn sh(program: &str, args: &[&str]) {
    let status =
        Command::new(program).args(args).status().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// A root filesystem tree with busybox, two users and some files the tests look for.
fn root_tree(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["etc", "home/alice", "data", "tmp", "a-directory"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    sh("chmod", &["1777", dir.join("tmp").to_str().unwrap()]);
    sh("chown", &["1000:1000", dir.join("home/alice").to_str().unwrap()]);
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
         bob:x:1001:1001:Bob:/home/bob:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nbob:x:1001:\nwheel:x:10:alice\naudio:x:29:alice,bob\n",
    )
    .unwrap();
    std::fs::write(dir.join("bin/not-executable"), "#!/bin/sh\necho no\n").unwrap();
}

fn tool(name: &str) -> String {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| name.to_owned())
}

fn root_disk(dir: &Path, fstype: &str) -> PathBuf {
    let tree = dir.join("tree");
    root_tree(&tree);
    let image = dir.join(format!("root.{fstype}"));
    match fstype {
        "erofs" => sh(&tool("mkfs.erofs"), &["-d0", image.to_str().unwrap(), tree.to_str().unwrap()]),
        _ => sh(
            &tool("mke2fs"),
            &["-q", "-t", "ext4", "-d", tree.to_str().unwrap(), image.to_str().unwrap(), "32M"],
        ),
    }
    image
}

fn rw_disk(dir: &Path) -> PathBuf {
    let image = dir.join("rw.img");
    sh("truncate", &["-s", "256M", image.to_str().unwrap()]);
    sh(&tool("mkfs.ext4"), &["-q", "-F", image.to_str().unwrap()]);
    image
}

fn fixture(fstype: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path().join("root"), dir.path().join("run"));
    let initramfs = guest::initramfs(&paths, &env_path("BULKHEAD_GUEST")).unwrap();
    let run_dir = dir.path().join("vm");
    std::fs::create_dir_all(&run_dir).unwrap();
    let accel = choose_accel(AccelRequest::Auto, &HostFacts::probe()).unwrap().accel;
    let root = root_disk(dir.path(), fstype);
    let rw = rw_disk(dir.path());
    let config = SandboxConfig {
        qemu: None,
        kernel: env_path("BULKHEAD_TEST_KERNEL"),
        initramfs,
        memory_mib: 256,
        vcpus: 1,
        accel,
        disks: vec![Disk::raw(root, true), Disk::raw(rw, false)],
        cmdline: String::new(),
        console_log: run_dir.join("console.log"),
        run_dir,
        ready_timeout: Duration::from_secs(120),
        net: None,
    };
    Fixture { dir, config }
}

fn container(fstype: &str) -> ContainerSpec {
    ContainerSpec {
        hostname: "box1".into(),
        root_device: "/dev/vda".into(),
        root_fstype: fstype.into(),
        root_writable: false,
        rw_device: Some("/dev/vdb".into()),
        read_only: false,
        tmpfs: Vec::new(),
        hosts: "127.0.0.1\tlocalhost\n10.0.0.2\tbox1\n".into(),
        resolv_conf: "nameserver 10.0.0.1\n".into(),
        network: None,
    }
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec { args: args.iter().map(|a| a.to_string()).collect(), cwd: "/".into(), ..Default::default() }
}

/// A booted, set-up container and the events it reported.
struct Guest {
    sandbox: Option<Sandbox>,
    session: Arc<Session>,
    events: Receiver<Event>,
    seen: Vec<Event>,
}

/// A started process: its pid and the threads collecting its output.
struct Running {
    id: u32,
    pid: i32,
    stdout: JoinHandle<Vec<u8>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

#[derive(Debug)]
struct Output {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

/// Drains guest → host `stream`, granting as it goes, until the stream's end.
fn collect(session: &Arc<Session>, stream: u32, chunks: Receiver<Vec<u8>>) -> JoinHandle<Vec<u8>> {
    let session = Arc::clone(session);
    std::thread::spawn(move || {
        let mut all = Vec::new();
        loop {
            let chunk = chunks.recv_timeout(WAIT).expect("stream ended or timed out");
            if chunk.is_empty() {
                return all;
            }
            session.grant(stream, u32::try_from(chunk.len()).unwrap()).unwrap();
            all.extend_from_slice(&chunk);
        }
    })
}

impl Guest {
    fn boot(config: &SandboxConfig, spec: ContainerSpec) -> Guest {
        let mut sandbox = Sandbox::boot(config).unwrap();
        let events = sandbox.take_events().unwrap();
        let session = sandbox.session();
        let reply = sandbox.request(Message::Setup { container: spec }, REQUEST_TIMEOUT, "set up").unwrap();
        assert_eq!(reply, Message::SetupDone);
        Guest { sandbox: Some(sandbox), session, events, seen: Vec::new() }
    }

    fn start(&mut self, id: u32, spec: ProcessSpec) -> Result<Running, (i32, String)> {
        let stdout = self.session.open_output(stream_id(id, Stdio::Stdout));
        let stderr = spec.tty.is_none().then(|| self.session.open_output(stream_id(id, Stdio::Stderr)));
        let stdin = spec.stdin;
        match self.session.request(Message::Start { id, process: spec }, REQUEST_TIMEOUT).unwrap() {
            Message::Started { id: got, pid } => {
                assert_eq!(got, id);
                if stdin {
                    self.session.open_input(stream_id(id, Stdio::Stdin));
                }
                Ok(Running {
                    id,
                    pid,
                    stdout: collect(&self.session, stream_id(id, Stdio::Stdout), stdout),
                    stderr: stderr.map(|rx| collect(&self.session, stream_id(id, Stdio::Stderr), rx)),
                })
            }
            Message::StartFailed { id: got, exit_code, message } => {
                assert_eq!(got, id);
                Err((exit_code, message))
            }
            other => panic!("start answered with {other:?}"),
        }
    }

    fn event(&mut self, wanted: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.seen.iter().position(&wanted) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if wanted(&event) => return event,
                Ok(Event::Closed(why)) => panic!("the agent channel closed: {why}"),
                Ok(event) => self.seen.push(event),
                Err(RecvTimeoutError::Timeout) => panic!("no such event within {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("event channel gone"),
            }
        }
    }

    fn wait(&mut self, running: Running) -> Output {
        let stdout = running.stdout.join().unwrap();
        let stderr = running.stderr.map(|h| h.join().unwrap()).unwrap_or_default();
        let id = running.id;
        let status = match self.event(|e| matches!(e, Event::Exited { id: got, .. } if *got == id)) {
            Event::Exited { status, .. } => status,
            _ => unreachable!(),
        };
        Output {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            status,
        }
    }

    fn run(&mut self, id: u32, spec: ProcessSpec) -> Output {
        let running = self.start(id, spec).unwrap_or_else(|e| panic!("start {id} failed: {e:?}"));
        self.wait(running)
    }

    fn sh(&mut self, id: u32, script: &str) -> Output {
        self.run(id, process(&["sh", "-c", script]))
    }

    fn request(&mut self, message: Message) -> Message {
        self.sandbox.as_mut().unwrap().request(message, REQUEST_TIMEOUT, "answer").unwrap()
    }

    fn shutdown(mut self) {
        self.sandbox.take().unwrap().shutdown(Duration::from_secs(60)).unwrap();
    }
}

fn qemus_under(dir: &Path) -> Vec<String> {
    let out = Command::new("pgrep").arg("-af").arg(dir.to_str().unwrap()).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_container_runs_execs_and_reports_like_docker() {
    let f = fixture("erofs");
    let mut g = Guest::boot(&f.config, container("erofs"));

    // The main process: PID 1 of the container; it leaves a file for the execs to find.
    let main_spec = process(&["sh", "-c", "echo from-main > /main-file; exec sleep 1000"]);
    let main = g.start(1, main_spec).unwrap();
    let main_pid = main.pid;
    let deadline = Instant::now() + WAIT;
    while g.sh(2, "test -e /main-file").status != ExitStatus::Code(0) {
        assert!(Instant::now() < deadline, "the main process never wrote its file");
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = g.run(3, process(&["echo", "hi"]));
    assert_eq!((out.stdout.as_str(), out.status), ("hi\n", ExitStatus::Code(0)));
    let out = g.sh(4, "echo out; echo err >&2; exit 3");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(out.status, ExitStatus::Code(3));
    let out = g.sh(5, "kill -9 $$");
    assert_eq!(out.status, ExitStatus::Signal(9));
    assert_eq!(out.status.code(), 137);

    // Same filesystem and pid namespace as the main process.
    assert_eq!(g.run(6, process(&["cat", "/main-file"])).stdout, "from-main\n");
    assert_eq!(g.run(7, process(&["cat", "/proc/1/comm"])).stdout, "sleep\n");
    let out = g.sh(8, "echo $$; ls /proc | grep -c '^[0-9]'");
    let numbers: Vec<i32> = out.stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(numbers[0] > 1, "an exec is not PID 1: {out:?}");
    assert!(numbers[1] <= 4, "the container sees the guest's processes: {out:?}");

    // Environment, working directory, hostname, container files.
    let mut spec = process(&["sh", "-c", "echo $GREETING; pwd; echo $HOME; echo $PATH; hostname"]);
    spec.env = vec!["GREETING=hello world".into()];
    spec.cwd = "/new/work/dir".into();
    let out = g.run(9, spec);
    assert_eq!(
        out.stdout,
        "hello world\n/new/work/dir\n/root\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nbox1\n"
    );
    assert_eq!(g.run(10, process(&["cat", "/etc/hosts"])).stdout, "127.0.0.1\tlocalhost\n10.0.0.2\tbox1\n");
    assert_eq!(g.run(11, process(&["cat", "/etc/resolv.conf"])).stdout, "nameserver 10.0.0.1\n");
    assert_eq!(g.run(12, process(&["cat", "/etc/hostname"])).stdout, "box1\n");
    let out = g.sh(13, "ls /dev; test -c /dev/null && test -c /dev/urandom && test -d /dev/pts && echo ok");
    for node in ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin"] {
        assert!(out.stdout.lines().any(|l| l == node), "/dev lacks {node}: {out:?}");
    }
    assert!(out.stdout.ends_with("ok\n"), "{out:?}");

    // Users from the container's own passwd and group files.
    let mut spec = process(&["id"]);
    spec.user = "alice".into();
    let out = g.run(14, spec);
    assert!(out.stdout.starts_with("uid=1000(alice) gid=1000(alice) groups="), "{out:?}");
    assert!(out.stdout.contains("10(wheel)") && out.stdout.contains("29(audio)"), "{out:?}");
    let mut spec = process(&["sh", "-c", "id; echo $HOME"]);
    spec.user = "1001:29".into();
    let out = g.run(15, spec);
    assert!(out.stdout.starts_with("uid=1001(bob) gid=29(audio)"), "{out:?}");
    assert!(out.stdout.ends_with("/home/bob\n"), "{out:?}");
    let mut spec = process(&["id", "-u"]);
    spec.user = "4242".into();
    assert_eq!(g.run(16, spec).stdout, "4242\n");

    // Start failures get Docker's exit codes.
    let (code, message) = g.start(17, process(&["no-such-command"])).err().unwrap();
    assert_eq!(code, 127);
    assert_eq!(message, "exec: \"no-such-command\": executable file not found in $PATH");
    let (code, message) = g.start(18, process(&["/bin/not-executable"])).err().unwrap();
    assert_eq!((code, message.contains("permission denied")), (126, true), "{message}");
    assert_eq!(g.start(19, process(&["/a-directory"])).err().unwrap().0, 126);
    assert_eq!(g.start(20, process(&["/nowhere/x"])).err().unwrap().0, 127);
    let mut spec = process(&["id"]);
    spec.user = "mallory".into();
    let (code, message) = g.start(21, spec).err().unwrap();
    assert_eq!(code, 125);
    assert_eq!(message, "unable to find user mallory: no matching entries in passwd file");
    assert_eq!(g.start(22, process(&[])).err().unwrap().0, 125);

    // Stdin reaches the process; credit keeps a megabyte flowing both ways.
    let mut spec = process(&["cat"]);
    spec.stdin = true;
    let running = g.start(23, spec).unwrap();
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    g.session.send_data(stream_id(23, Stdio::Stdin), &input).unwrap();
    g.session.close_input(stream_id(23, Stdio::Stdin)).unwrap();
    let stdout = running.stdout.join().unwrap();
    assert!(stdout == input, "cat returned {} bytes of {}", stdout.len(), input.len());
    assert_eq!(g.wait_status(23), ExitStatus::Code(0));

    // A terminal, and resizing it once the process has shown the first size.
    let mut spec = process(&["sh", "-c", "tty; test -t 0 && echo is-a-tty; stty size; read line; stty size"]);
    spec.tty = Some(WindowSize { rows: 24, cols: 80 });
    spec.stdin = true;
    let stream = stream_id(24, Stdio::Stdout);
    let chunks = g.session.open_output(stream);
    let reply = g.session.request(Message::Start { id: 24, process: spec }, REQUEST_TIMEOUT).unwrap();
    assert!(matches!(reply, Message::Started { id: 24, .. }), "{reply:?}");
    g.session.open_input(stream_id(24, Stdio::Stdin));
    let mut out = String::new();
    let mut resized = false;
    loop {
        let chunk = chunks.recv_timeout(WAIT).unwrap();
        if chunk.is_empty() {
            break;
        }
        g.session.grant(stream, u32::try_from(chunk.len()).unwrap()).unwrap();
        out.push_str(&String::from_utf8_lossy(&chunk));
        if !resized && out.contains("24 80") {
            resized = true;
            g.session.notify(Message::Resize { id: 24, size: WindowSize { rows: 50, cols: 132 } }).unwrap();
            g.session.send_data(stream_id(24, Stdio::Stdin), b"go\n").unwrap();
        }
    }
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[1..], ["is-a-tty", "24 80", "go", "50 132"], "{out:?}");
    assert_eq!(g.wait_status(24), ExitStatus::Code(0));

    // Top and stats see the container's processes.
    let Message::TopReply { processes } = g.request(Message::Top) else { panic!("top") };
    let main_row = processes.iter().find(|p| p.pid == main_pid).expect("top lists the main process");
    assert_eq!((main_row.command.as_str(), main_row.user.as_str()), ("sleep 1000", "root"));
    assert!(main_row.rss_bytes > 0, "{main_row:?}");
    let Message::StatsReply { stats } = g.request(Message::Stats) else { panic!("stats") };
    assert!(stats.cpu_usage_ns > 0 && stats.pids >= 1, "{stats:?}");
    assert!(stats.memory_total_bytes > 128 << 20 && stats.memory_total_bytes < 512 << 20, "{stats:?}");
    assert!(stats.memory_used_bytes > 0 && stats.memory_used_bytes < stats.memory_total_bytes, "{stats:?}");

    // A file copied in comes back out.
    let work = f.dir.path().join("copy");
    std::fs::create_dir_all(work.join("in")).unwrap();
    std::fs::write(work.join("in/hello.txt"), "copied in\n").unwrap();
    let archive =
        Command::new("tar").arg("-C").arg(work.join("in")).args(["-cf", "-", "hello.txt"]).output().unwrap();
    assert!(archive.status.success());
    let copy_in = 1003;
    assert_eq!(
        g.request(Message::CopyIn { stream: copy_in, path: "/tmp".into() }),
        Message::CopyStarted { stream: copy_in }
    );
    g.session.open_input(copy_in);
    g.session.send_data(copy_in, &archive.stdout).unwrap();
    g.session.close_input(copy_in).unwrap();
    assert_eq!(
        g.event(|e| matches!(e, Event::CopyDone { .. })),
        Event::CopyDone { stream: copy_in, error: None }
    );
    assert_eq!(g.run(25, process(&["cat", "/tmp/hello.txt"])).stdout, "copied in\n");
    let copy_out = 1007;
    let chunks = g.session.open_output(copy_out);
    let reply = g.request(Message::CopyOut { stream: copy_out, path: "/tmp/hello.txt".into() });
    assert_eq!(reply, Message::CopyStarted { stream: copy_out });
    let tar = collect(&g.session, copy_out, chunks).join().unwrap();
    assert_eq!(
        g.event(|e| matches!(e, Event::CopyDone { .. })),
        Event::CopyDone { stream: copy_out, error: None }
    );
    std::fs::create_dir_all(work.join("out")).unwrap();
    let tar_path = work.join("out.tar");
    std::fs::write(&tar_path, tar).unwrap();
    sh("tar", &["-C", work.join("out").to_str().unwrap(), "-xf", tar_path.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(work.join("out/hello.txt")).unwrap(), "copied in\n");
    let reply = g.sandbox.as_mut().unwrap().request(
        Message::CopyIn { stream: 1011, path: "/no/such/dir".into() },
        REQUEST_TIMEOUT,
        "copy",
    );
    assert!(reply.unwrap_err().to_string().contains("/no/such/dir"));

    // Killing the main process ends the container and the execs still in it; later execs are
    // refused.
    let straggler = g.start(26, process(&["sleep", "1000"])).unwrap();
    g.session.notify(Message::Signal { id: 1, signal: 9 }).unwrap();
    let out = g.wait(main);
    assert_eq!(out.status, ExitStatus::Signal(9));
    assert_eq!(g.wait(straggler).status, ExitStatus::Signal(9));
    let (code, message) = g.start(27, process(&["true"])).err().unwrap();
    assert_eq!((code, message.as_str()), (125, "the container's main process has exited"));
    g.shutdown();
    assert!(qemus_under(f.dir.path()).is_empty());
}

impl Guest {
    fn wait_status(&mut self, id: u32) -> ExitStatus {
        match self.event(|e| matches!(e, Event::Exited { id: got, .. } if *got == id)) {
            Event::Exited { status, .. } => status,
            _ => unreachable!(),
        }
    }
}

#[test]
fn the_writable_layer_survives_a_restart() {
    let f = fixture("ext4");
    let mut g = Guest::boot(&f.config, container("ext4"));
    let out = g.sh(1, "echo hi; echo persisted > /data/file; mkdir -p /new && echo 2 > /new/f; sync");
    assert_eq!((out.stdout.as_str(), out.status), ("hi\n", ExitStatus::Code(0)));
    g.shutdown();

    let mut g = Guest::boot(&f.config, container("ext4"));
    let out = g.sh(1, "cat /data/file /new/f; exit 3");
    assert_eq!((out.stdout.as_str(), out.status), ("persisted\n2\n", ExitStatus::Code(3)));
    g.shutdown();
    assert!(qemus_under(f.dir.path()).is_empty());
}

#[test]
fn read_only_root_allows_writes_only_to_tmpfs() {
    let f = fixture("erofs");
    let mut spec = container("erofs");
    spec.read_only = true;
    spec.tmpfs = vec!["/scratch".into(), "/run:size=1m".into()];
    spec.rw_device = None;
    let mut g = Guest::boot(&f.config, spec);
    // The main process on a terminal, as `docker run -t`.
    let mut main_spec = process(&["sh", "-c", "tty; exec sleep 1000"]);
    main_spec.tty = Some(WindowSize { rows: 10, cols: 20 });
    let main = g.start(1, main_spec).unwrap();
    let out = g.sh(2, "touch /x");
    assert_ne!(out.status, ExitStatus::Code(0));
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    let out = g.sh(3, "touch /scratch/x /run/y /dev/shm/z /tmp/w 2>&1; echo done");
    assert_eq!(out.stdout, "touch: /tmp/w: Read-only file system\ndone\n");
    let out = g.sh(4, "echo 1.2.3.4 other >> /etc/hosts && echo ok");
    assert_eq!(out.stdout, "ok\n");
    g.session.notify(Message::Signal { id: 1, signal: 9 }).unwrap();
    let out = g.wait(main);
    assert_eq!((out.stdout.as_str(), out.status), ("/dev/pts/0\r\n", ExitStatus::Signal(9)));
    g.shutdown();
}

#[test]
fn fifty_megabytes_of_stdout_arrive_complete() {
    let f = fixture("erofs");
    let mut g = Guest::boot(&f.config, container("erofs"));
    let size = 50 * 1024 * 1024;
    let out = g.sh(1, &format!("head -c {size} /dev/zero; echo done >&2"));
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout.len(), size);
    assert!(out.stdout.bytes().all(|b| b == 0));
    assert_eq!(out.stderr, "done\n");
    g.shutdown();
}

#[test]
fn bad_requests_get_one_line_errors_and_the_guest_keeps_serving() {
    let f = fixture("erofs");
    let mut sandbox = Sandbox::boot(&f.config).unwrap();
    let mut request = |message: Message| sandbox.request(message, REQUEST_TIMEOUT, "answer");

    // Before setup: starts and copies are refused, notifications are ignored.
    let reply = request(Message::Start { id: 1, process: process(&["true"]) }).unwrap();
    assert!(matches!(reply, Message::StartFailed { id: 1, exit_code: 125, .. }), "{reply:?}");
    let err = request(Message::CopyOut { stream: 3, path: "/etc".into() }).unwrap_err().to_string();
    assert!(err.contains("setup has not been done"), "{err}");
    let session = sandbox.session();
    session.notify(Message::Signal { id: 99, signal: 9 }).unwrap();
    session.notify(Message::Resize { id: 99, size: WindowSize { rows: 1, cols: 1 } }).unwrap();
    session.notify(Message::Credit { stream: 12345, bytes: u32::MAX }).unwrap();

    let mut request = |message: Message| sandbox.request(message, REQUEST_TIMEOUT, "answer");
    for (spec, expected) in [
        (
            ContainerSpec { root_fstype: "btrfs".into(), ..container("erofs") },
            "root filesystem type \"btrfs\"",
        ),
        (ContainerSpec { root_device: "/dev/null".into(), ..container("erofs") }, "is not a block device"),
        (
            ContainerSpec { root_device: "/etc/../dev/vda".into(), ..container("erofs") },
            "is not a block device",
        ),
        (ContainerSpec { hostname: "a/b".into(), ..container("erofs") }, "hostname \"a/b\" is not valid"),
        (
            ContainerSpec { root_writable: true, ..container("erofs") },
            "a writable root disk must be ext4 and comes without a writable-layer device",
        ),
        (ContainerSpec { tmpfs: vec!["relative".into()], ..container("erofs") }, "tmpfs \"relative\""),
        (ContainerSpec { root_fstype: "ext4".into(), ..container("erofs") }, "mounting ext4 /dev/vda"),
    ] {
        let err = request(Message::Setup { container: spec }).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} lacks {expected}");
        assert!(!err.contains('\n'), "{err}");
    }
    // Mounting a root ahead is for a template being made, never after the handshake.
    let err = request(Message::MountRoot {
        device: "/dev/null".into(),
        programs: vec!["sh".into()],
        path: "/".into(),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("unexpected message mount_root") && !err.contains('\n'), "{err}");
    // The failed mount left nothing behind that stops a good setup.
    assert_eq!(request(Message::Setup { container: container("erofs") }).unwrap(), Message::SetupDone);
    let err = request(Message::Setup { container: container("erofs") }).unwrap_err().to_string();
    assert!(err.contains("already set up"), "{err}");

    let start = |id, spec| Message::Start { id, process: spec };
    let mut bad_rlimit = process(&["true"]);
    bad_rlimit.rlimits = vec![bulkhead_proto::Rlimit { resource: "bogus".into(), soft: 1, hard: 1 }];
    let mut nul = process(&["true"]);
    nul.env = vec!["A=\0".into()];
    let mut bad_group = process(&["true"]);
    bad_group.user = "alice:nogroup".into();
    for (spec, code) in [(bad_rlimit, 125), (nul, 125), (bad_group, 125), (process(&[""]), 127)] {
        let reply = request(start(5, spec)).unwrap();
        assert!(
            matches!(reply, Message::StartFailed { id: 5, exit_code, .. } if exit_code == code),
            "{reply:?}"
        );
    }
    let err = request(Message::CopyOut { stream: 7, path: "/nothing/here".into() }).unwrap_err().to_string();
    assert!(err.contains("/nothing/here"), "{err}");
    sandbox.ping().unwrap();
    sandbox.shutdown(Duration::from_secs(60)).unwrap();
}
