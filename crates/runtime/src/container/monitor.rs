//! The monitor: one detached supervisor process per running container (`bulkhead monitor <id>`).
//!
//! It owns the VM (QEMU dies with it), writes the main process's output to the log and to
//! attached clients, serves the control socket (attach, exec, stop, kill, stats, top, cp),
//! records the exit status and start phases in the container's state, applies the restart
//! policy, and removes the container at the end when it was run with `--rm`.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_proto::{encode, stream_id, ContainerSpec, ExitStatus, Frame, FrameReader, Message, Stdio};
use bulkhead_vmm::{choose_accel, AccelRequest, Disk, DiskFormat, HostFacts};
use serde::{Deserialize, Serialize};

use super::control::{self, Reply, Request, COPY, STDERR, STDIN, STDOUT};
use super::logs::{now_rfc3339, LogWriter};
use super::record::{ContainerConfig, StartPhases, Status};
use super::store::Containers;
use crate::sandbox::{Sandbox, SandboxConfig, REQUEST_TIMEOUT};
use crate::session::{Event, Session};
use crate::{guest, Error, Paths};

/// The main process is always process 1 of the agent session.
const MAIN: u32 = 1;
/// How long a foreground `run` may take to attach before the main process starts anyway.
const ATTACH_WAIT: Duration = Duration::from_secs(120);
/// After SIGKILL, how long the guest gets to report the exit before the VM is stopped hard.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What the monitor tells the process that started it, as one JSON line on its stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Readiness {
    /// The VM is up and waits for an attach before it starts the main process.
    Booted,
    /// The main process runs.
    Started,
    Failed {
        message: String,
        exit_code: i32,
    },
}

struct Shared {
    containers: Containers,
    id: String,
    config: ContainerConfig,
    session: Mutex<Option<Arc<Session>>>,
    attached: Mutex<Vec<Client>>,
    attach_arrived: (Mutex<bool>, Condvar),
    /// Set once the main process of the current run ended and its exit is recorded.
    finished: (Mutex<Option<i32>>, Condvar),
    exec_exits: Mutex<HashMap<u32, Sender<ExitStatus>>>,
    copy_done: Mutex<HashMap<u32, Sender<Option<String>>>>,
    next_id: AtomicU32,
    stopped_by_user: AtomicBool,
    force_stop: AtomicBool,
    vm_pid: AtomicU32,
    main_stdin: AtomicBool,
}

/// A client connection that receives frames.
type Client = Arc<Mutex<UnixStream>>;

/// Runs the monitor for container `id` until the container ends; returns the process exit code.
pub fn run(paths: &Paths, id: &str, wait_attach: bool, mut ready: Box<dyn Write + Send>) -> i32 {
    let containers = Containers::new(paths);
    let config = match containers.load(id) {
        Ok(c) => c.config,
        Err(e) => {
            let _ = control::write_line(
                &mut ready,
                &Readiness::Failed { message: e.to_string(), exit_code: 125 },
            );
            return 1;
        }
    };
    let shared = Arc::new(Shared {
        containers: containers.clone(),
        id: id.to_owned(),
        config,
        session: Mutex::new(None),
        attached: Mutex::new(Vec::new()),
        attach_arrived: (Mutex::new(false), Condvar::new()),
        finished: (Mutex::new(None), Condvar::new()),
        exec_exits: Mutex::new(HashMap::new()),
        copy_done: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(MAIN + 1),
        stopped_by_user: AtomicBool::new(false),
        force_stop: AtomicBool::new(false),
        vm_pid: AtomicU32::new(0),
        main_stdin: AtomicBool::new(false),
    });
    let mut ready = Some(ready);
    let code = match supervise(paths, &shared, wait_attach, &mut ready) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "monitor failed");
            let (message, exit_code) = match &e {
                Error::StartFailed { exit_code, message } => (message.clone(), *exit_code),
                other => (other.to_string(), 125),
            };
            record(&shared, |state| {
                state.status =
                    if matches!(e, Error::StartFailed { .. }) { Status::Created } else { Status::Exited };
                state.exit_code = Some(exit_code);
                state.error = Some(message.clone());
                state.monitor_pid = None;
                state.vm_pid = None;
                state.finished_at = Some(now_rfc3339());
            });
            if let Some(mut ready) = ready.take() {
                let _ = control::write_line(
                    &mut ready,
                    &Readiness::Failed { message: message.clone(), exit_code },
                );
            }
            broadcast_end(
                &shared,
                &Frame::Message(Message::StartFailed { id: MAIN, exit_code, message: message.clone() }),
            );
            finish(&shared, exit_code);
            1
        }
    };
    let _ = std::fs::remove_dir_all(shared.containers.run_dir(id));
    if shared.config.auto_remove {
        if let Ok(_lock) = shared.containers.lock(id) {
            let _ = shared.containers.remove(id);
        }
    }
    code
}

fn supervise(
    paths: &Paths,
    shared: &Arc<Shared>,
    wait_attach: bool,
    ready: &mut Option<Box<dyn Write + Send>>,
) -> Result<i32, Error> {
    let id = shared.id.clone();
    let run_dir = shared.containers.run_dir(&id);
    let vm_dir = run_dir.join("vm");
    std::fs::create_dir_all(&vm_dir).map_err(Error::io("creating", &vm_dir))?;
    let socket = shared.containers.monitor_socket(&id);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(Error::io("listening on", &socket))?;
    {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|e| Error::Agent(format!("starting the control thread: {e}")))?;
    }

    let guest_binary = guest::find_guest_binary()?;
    let initramfs = guest::initramfs(paths, &guest_binary)?;
    let request = shared.config.accel.parse::<AccelRequest>().map_err(Error::Invalid)?;
    let accel = choose_accel(request, &HostFacts::probe())?;
    let disk = Disk {
        path: shared.containers.dir(&id).join(super::ops::ROOT_DISK_FILE),
        read_only: false,
        format: DiskFormat::Qcow2,
    };
    // Lives as long as the monitor: the TAP device and the published ports outlast restarts.
    let net = crate::network::up(paths, &id, &shared.config)?;
    let sandbox_config = SandboxConfig {
        qemu: None,
        kernel: shared.config.kernel_path.clone(),
        initramfs,
        memory_mib: shared.config.memory_mib,
        vcpus: shared.config.vcpus,
        accel: accel.accel,
        disks: vec![disk],
        cmdline: crate::tcg::guest_cmdline(paths, accel.accel),
        run_dir: vm_dir,
        console_log: shared.containers.dir(&id).join("console.log"),
        ready_timeout: Duration::from_secs(60),
        net: net.device.clone(),
    };
    let container_spec = ContainerSpec {
        hostname: shared.config.hostname.clone(),
        root_device: "/dev/vda".into(),
        root_fstype: "ext4".into(),
        root_writable: true,
        rw_device: None,
        read_only: shared.config.read_only,
        tmpfs: shared.config.tmpfs.clone(),
        hosts: net.hosts.clone(),
        resolv_conf: net.resolv_conf.clone(),
        network: net.spec.clone(),
    };

    // A container that never ran still has the disk it was created with.
    let pristine = shared.containers.load(&id).map(|c| c.state.started_at.is_none()).unwrap_or(false);
    // Claim the container at once, so a concurrent `start` sees it taken while the VM boots.
    record(shared, |state| state.monitor_pid = Some(std::process::id()));
    let mut first = true;
    loop {
        let started = Instant::now();
        let (mut sandbox, start_path) = start_vm(paths, shared, &sandbox_config, first && pristine)?;
        shared.vm_pid.store(sandbox.vm().pid(), Ordering::SeqCst);
        let boot = sandbox.phases();
        tracing::debug!(path = %start_path, "VM up");
        let events = sandbox.take_events().ok_or_else(|| Error::Agent("event channel taken twice".into()))?;
        let session = sandbox.session();
        *lock(&shared.session) = Some(Arc::clone(&session));

        let setup_at = Instant::now();
        sandbox.request(
            Message::Setup { container: container_spec.clone() },
            REQUEST_TIMEOUT,
            "set up the container",
        )?;
        let rootfs_ms = ms(setup_at.elapsed());
        tracing::debug!(rootfs_ms, "root filesystem set up");

        if first && wait_attach {
            if let Some(mut out) = ready.take() {
                let _ = control::write_line(&mut out, &Readiness::Booted);
            }
            let (arrived, cv) = &shared.attach_arrived;
            let guard = lock(arrived);
            let _ = cv.wait_timeout_while(guard, ATTACH_WAIT, |arrived| !*arrived);
            tracing::debug!("attached");
        }

        let process = shared.config.process.clone();
        let tty = process.tty.is_some();
        let stdin = process.stdin;
        let out_rx = session.open_output(stream_id(MAIN, Stdio::Stdout));
        let err_rx = (!tty).then(|| session.open_output(stream_id(MAIN, Stdio::Stderr)));
        let start_at = Instant::now();
        match sandbox.request(
            Message::Start { id: MAIN, process },
            REQUEST_TIMEOUT,
            "start the main process",
        )? {
            Message::Started { .. } => {}
            Message::StartFailed { exit_code, message, .. } => {
                let _ = sandbox.shutdown(Duration::from_secs(10));
                return Err(Error::StartFailed { exit_code, message: crate::session::clip(&message) });
            }
            other => return Err(Error::Agent(format!("expected started, the guest sent {}", other.kind()))),
        }
        if stdin {
            session.open_input(stream_id(MAIN, Stdio::Stdin));
            shared.main_stdin.store(true, Ordering::SeqCst);
        }
        let phases = StartPhases {
            vm_process_ms: boot.vm_process_ms,
            kernel_to_init_ms: boot.kernel_to_init_ms,
            init_to_ready_ms: boot.init_to_ready_ms,
            restore_ms: boot.restore_ms,
            rootfs_ms,
            process_start_ms: ms(start_at.elapsed()),
            total_ms: ms(started.elapsed()),
        };
        let vm_pid = sandbox.vm().pid();
        record(shared, |state| {
            state.status = Status::Running;
            state.monitor_pid = Some(std::process::id());
            state.vm_pid = Some(vm_pid);
            state.exit_code = None;
            state.error = None;
            state.started_at = Some(now_rfc3339());
            state.finished_at = None;
            state.accel = Some(accel.accel.to_string());
            state.accel_reason = Some(accel.reason.clone());
            state.phases = Some(phases);
            state.start_path = Some(start_path.clone());
            if !first {
                state.restart_count += 1;
            }
        });
        tracing::debug!("main process started");
        if let Some(mut out) = ready.take() {
            let _ = control::write_line(&mut out, &Readiness::Started);
        }
        *lock(&shared.finished.0) = None;

        let log = Arc::new(Mutex::new(
            LogWriter::open(&shared.containers.log_path(&id))
                .map_err(Error::io("opening the log", shared.containers.log_path(&id)))?,
        ));
        let mut pumps =
            vec![pump_main(shared, &session, &log, stream_id(MAIN, Stdio::Stdout), STDOUT, out_rx)];
        if let Some(err_rx) = err_rx {
            pumps.push(pump_main(shared, &session, &log, stream_id(MAIN, Stdio::Stderr), STDERR, err_rx));
        }

        let (status, error) = wait_main(shared, &mut sandbox, &events);
        for pump in pumps {
            let _ = pump.join();
        }
        let _ = lock(&log).flush_partial();
        shared.main_stdin.store(false, Ordering::SeqCst);
        *lock(&shared.session) = None;
        let code = status.map_or(137, ExitStatus::code);
        tracing::debug!(code, "main process ended");
        if shared.config.auto_remove {
            // `--rm` (which never restarts): the disk goes with the container, so nothing in the
            // VM or in QEMU needs flushing first.
            let _ = sandbox.kill();
        } else {
            let _ = sandbox.shutdown(Duration::from_secs(10));
        }
        tracing::debug!("VM ended");
        shared.vm_pid.store(0, Ordering::SeqCst);

        let stopped = shared.stopped_by_user.load(Ordering::SeqCst);
        let restarts = shared.containers.load(&id).map(|c| c.state.restart_count).unwrap_or(0);
        let again = shared.config.restart.should_restart(code, restarts, stopped);
        record(shared, |state| {
            state.status = if again { Status::Restarting } else { Status::Exited };
            state.exit_code = Some(code);
            state.error = error.clone();
            state.finished_at = Some(now_rfc3339());
            state.stopped_by_user = stopped;
            state.vm_pid = None;
            if !again {
                state.monitor_pid = None;
            }
        });
        // Attached clients hear of the exit only once the record says so, so a command that
        // follows theirs (`rm`, `ps`) sees the container exited.
        broadcast_end(
            shared,
            &Frame::Message(Message::Exited { id: MAIN, status: status.unwrap_or(ExitStatus::Signal(9)) }),
        );
        finish(shared, code);
        if !again {
            return Ok(0);
        }
        first = false;
        shared.force_stop.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the container's VM: restored from a template unless templates are off (on a first
/// start, from the template's specialisation for the container's image), a cold boot when they
/// are or when anything about the template fails. Returns the VM and the path taken, in words
/// for `inspect`.
fn start_vm(
    paths: &Paths,
    shared: &Shared,
    config: &SandboxConfig,
    pristine: bool,
) -> Result<(Sandbox, String), Error> {
    use crate::template;
    if shared.config.no_template || !template::enabled(paths) {
        return Ok((Sandbox::boot(config)?, "cold boot (templates disabled)".into()));
    }
    let prepared = template::qemu_version(paths)
        .and_then(|version| {
            let layout = template::layout(&config.disks)?;
            Ok(template::meta_for(config, layout, &shared.config.kernel_digest, &version))
        })
        .and_then(|meta| template::ensure(paths, config, &meta));
    let template = match prepared {
        Ok(template) => template,
        Err(e) => {
            tracing::warn!(error = %e, "no template; booting cold");
            return Ok((Sandbox::boot(config)?, format!("cold boot (template unavailable: {e})")));
        }
    };
    if pristine {
        if let Some(started) = start_from_image(paths, shared, config, &template) {
            return Ok(started);
        }
    }
    match Sandbox::restore(config, &template.state, &template.memory) {
        Ok(sandbox) => Ok((sandbox, format!("template {}", &template.key[..12]))),
        Err(e) => {
            // A template that cannot be restored (damaged, truncated) is dropped and rebuilt
            // by the next start; this one boots cold.
            tracing::warn!(error = %e, key = %template.key, "template restore failed; booting cold");
            template::discard(paths, &template.key);
            Ok((
                Sandbox::boot(config)?,
                format!("cold boot (template {} failed to restore: {e})", &template.key[..12]),
            ))
        }
    }
}

/// A container's first start from its image's specialisation of `template` (see
/// [`crate::template::ImageTemplate`]): the container's disk, which nothing has written yet,
/// becomes a copy of the one the specialisation saw. `None` (after saying why in the log) when
/// that cannot be done; the caller then restores `template` itself.
fn start_from_image(
    paths: &Paths,
    shared: &Shared,
    config: &SandboxConfig,
    template: &crate::template::Template,
) -> Option<(Sandbox, String)> {
    use crate::template;
    let disk = config.disks.first().filter(|d| d.format == DiskFormat::Qcow2 && config.disks.len() == 1)?;
    let image = shared.config.root_disk.file_stem()?.to_string_lossy().into_owned();
    let process = &shared.config.process;
    let path = process.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or_default();
    let specialised = super::ops::cow_template(paths, &shared.config.root_disk).and_then(|cow| {
        let spec = template::ImageSpec {
            name: &image,
            cow: &cow,
            device: "/dev/vda",
            programs: process.args.first().cloned().into_iter().collect(),
            path: path.to_owned(),
        };
        template::ensure_image(paths, config, template, &spec)
    });
    let specialised = match specialised {
        Ok(specialised) => specialised,
        Err(e) => {
            tracing::warn!(error = %e, "no image template; restoring the plain template");
            return None;
        }
    };
    // Through a temporary file: a monitor killed halfway leaves the container's disk whole.
    let staged = disk.path.with_extension("qcow2.new");
    if let Err(e) =
        std::fs::copy(&specialised.disk, &staged).and_then(|_| std::fs::rename(&staged, &disk.path))
    {
        tracing::warn!(error = %e, "copying the image template's disk");
        let _ = std::fs::remove_file(&staged);
        return None;
    }
    match Sandbox::restore(config, &specialised.state, &specialised.memory) {
        Ok(sandbox) => Some((
            sandbox,
            format!("template {} (image {})", &template.key[..12], &image[..image.len().min(12)]),
        )),
        Err(e) => {
            // The disk now holds the specialisation's copy: a sound filesystem, which the plain
            // template's restore mounts (and recovers) like any other.
            tracing::warn!(error = %e, "image template restore failed; restoring the plain template");
            template::discard_image(paths, template, &image);
            None
        }
    }
}

/// Waits for the main process to end; returns its status (None if the VM died first) and an
/// error text for abnormal ends.
fn wait_main(
    shared: &Shared,
    sandbox: &mut Sandbox,
    events: &Receiver<Event>,
) -> (Option<ExitStatus>, Option<String>) {
    loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Exited { id: MAIN, status }) => return (Some(status), None),
            Ok(Event::Exited { id, status }) => {
                if let Some(tx) = lock(&shared.exec_exits).remove(&id) {
                    let _ = tx.send(status);
                }
            }
            Ok(Event::CopyDone { stream, error }) => {
                if let Some(tx) = lock(&shared.copy_done).remove(&stream) {
                    let _ = tx.send(error);
                }
            }
            Ok(Event::Closed(why)) => {
                let failure = sandbox.vm().failure("running the container");
                lock(&shared.exec_exits).clear();
                lock(&shared.copy_done).clear();
                let forced = shared.force_stop.load(Ordering::SeqCst);
                let error =
                    if forced { None } else { Some(format!("the VM ended unexpectedly ({why}): {failure}")) };
                return (forced.then_some(ExitStatus::Signal(9)), error);
            }
            Err(RecvTimeoutError::Timeout) => {
                if shared.force_stop.load(Ordering::SeqCst) {
                    let _ = sandbox.vm().hard_stop();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return (None, Some("the agent session ended".into())),
        }
    }
}

/// Moves one output stream of the main process to the log and to attached clients, returning
/// credit only after both have taken the bytes: a slow client slows the container, nothing is
/// dropped.
fn pump_main(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    log: &Arc<Mutex<LogWriter>>,
    guest_stream: u32,
    client_stream: u32,
    rx: Receiver<Vec<u8>>,
) -> JoinHandle<()> {
    let (shared, session, log) = (Arc::clone(shared), Arc::clone(session), Arc::clone(log));
    std::thread::spawn(move || {
        for chunk in rx {
            if chunk.is_empty() {
                break;
            }
            if let Err(e) = lock(&log).write(client_stream as usize, &chunk) {
                tracing::warn!(error = %e, "writing the container log");
            }
            let frame = Frame::Data { stream: client_stream, bytes: chunk };
            let clients: Vec<Client> = lock(&shared.attached).clone();
            for client in clients {
                if send_frame(&client, &frame).is_err() {
                    lock(&shared.attached).retain(|c| !Arc::ptr_eq(c, &client));
                }
            }
            let Frame::Data { bytes, .. } = frame else { unreachable!() };
            let _ = session.grant(guest_stream, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        }
    })
}

/// Sends `frame` to every attached client and detaches them all (the run is over).
fn broadcast_end(shared: &Shared, frame: &Frame) {
    let clients = std::mem::take(&mut *lock(&shared.attached));
    for client in clients {
        let _ = send_frame(&client, frame);
        let _ = lock(&client).shutdown(std::net::Shutdown::Both);
    }
}

fn finish(shared: &Shared, code: i32) {
    let (finished, cv) = &shared.finished;
    *lock(finished) = Some(code);
    cv.notify_all();
}

fn record(shared: &Shared, change: impl FnOnce(&mut super::record::ContainerState)) {
    let mut state = match shared.containers.load(&shared.id) {
        Ok(c) => c.state,
        Err(e) => {
            tracing::warn!(error = %e, "reading state");
            return;
        }
    };
    change(&mut state);
    if let Err(e) = shared.containers.save_state(&shared.id, &state) {
        tracing::warn!(error = %e, "writing state");
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for stream in listener.incoming().flatten() {
        let shared = Arc::clone(shared);
        let _ = std::thread::Builder::new().name("client".into()).spawn(move || {
            if let Err(e) = serve_client(stream, &shared) {
                tracing::debug!(error = %e, "client");
            }
        });
    }
}

fn serve_client(stream: UnixStream, shared: &Arc<Shared>) -> Result<(), Error> {
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| Error::Agent(e.to_string()))?);
    let mut writer = stream;
    let request: Request = match control::read_line(&mut reader) {
        Ok(r) => r,
        Err(e) => {
            let _ = control::write_line(
                &mut writer,
                &Reply::Error { message: format!("bad request: {e}"), exit_code: None },
            );
            return Ok(());
        }
    };
    let session = lock(&shared.session).clone();
    let reply_error = |writer: &mut UnixStream, message: String, exit_code: Option<i32>| {
        let _ = control::write_line(writer, &Reply::Error { message, exit_code });
    };
    let not_running = || format!("container {} is not running", super::ids::short(&shared.id));
    match request {
        Request::Attach { stdin } => {
            let client: Client =
                Arc::new(Mutex::new(writer.try_clone().map_err(|e| Error::Agent(e.to_string()))?));
            if lock(&shared.finished.0).is_some() && session.is_none() {
                reply_error(&mut writer, not_running(), None);
                return Ok(());
            }
            control::write_line(&mut writer, &Reply::Ok).map_err(|e| Error::Agent(e.to_string()))?;
            lock(&shared.attached).push(client);
            {
                let (arrived, cv) = &shared.attach_arrived;
                *lock(arrived) = true;
                cv.notify_all();
            }
            relay_input(shared, FrameReader::new(reader), MAIN, stdin);
        }
        Request::Exec { process } => {
            let Some(session) = session else {
                reply_error(&mut writer, not_running(), None);
                return Ok(());
            };
            exec(shared, &session, process, reader, writer)?;
        }
        Request::Stop { timeout_s, signal } => {
            shared.stopped_by_user.store(true, Ordering::SeqCst);
            if let Some(session) = session {
                stop(shared, &session, Duration::from_secs(timeout_s), signal);
            }
            let _ = control::write_line(&mut writer, &Reply::Ok);
        }
        Request::Kill { signal } => {
            let Some(session) = session else {
                reply_error(&mut writer, not_running(), None);
                return Ok(());
            };
            shared.stopped_by_user.store(true, Ordering::SeqCst);
            let _ = session.notify(Message::Signal { id: MAIN, signal });
            let _ = control::write_line(&mut writer, &Reply::Ok);
        }
        Request::Stats => {
            let Some(session) = session else {
                reply_error(&mut writer, not_running(), None);
                return Ok(());
            };
            match session.request(Message::Stats, REQUEST_TIMEOUT) {
                Ok(Message::StatsReply { stats }) => {
                    let vm_rss_bytes = rss_of(shared.vm_pid.load(Ordering::SeqCst));
                    let monitor_rss_bytes = rss_of(std::process::id());
                    let _ = control::write_line(
                        &mut writer,
                        &Reply::Stats { guest: stats, vm_rss_bytes, monitor_rss_bytes },
                    );
                }
                Ok(other) => {
                    reply_error(&mut writer, format!("unexpected {} from the guest", other.kind()), None)
                }
                Err(e) => reply_error(&mut writer, e.to_string(), None),
            }
        }
        Request::Top => {
            let Some(session) = session else {
                reply_error(&mut writer, not_running(), None);
                return Ok(());
            };
            match session.request(Message::Top, REQUEST_TIMEOUT) {
                Ok(Message::TopReply { processes }) => {
                    let _ = control::write_line(&mut writer, &Reply::Top { processes });
                }
                Ok(other) => {
                    reply_error(&mut writer, format!("unexpected {} from the guest", other.kind()), None)
                }
                Err(e) => reply_error(&mut writer, e.to_string(), None),
            }
        }
        Request::CopyIn { path } | Request::CopyOut { path } if session.is_none() => {
            let _ = path;
            reply_error(&mut writer, not_running(), None);
        }
        Request::CopyIn { path } => {
            copy(shared, &session.expect("checked above"), true, path, reader, writer)?
        }
        Request::CopyOut { path } => {
            copy(shared, &session.expect("checked above"), false, path, reader, writer)?
        }
    }
    Ok(())
}

/// Reads frames from a client and forwards stdin, resizes and signals to process `id`.
fn relay_input(shared: &Shared, mut frames: FrameReader<BufReader<UnixStream>>, id: u32, stdin: bool) {
    let session = || lock(&shared.session).clone();
    loop {
        match frames.read_frame() {
            Ok(Some(Frame::Data { stream: STDIN, bytes })) if stdin => {
                // A foreground run attaches (and may send all of its input) before the main
                // process starts; hold the input until the process can take it.
                while id == MAIN && !shared.main_stdin.load(Ordering::SeqCst) {
                    if lock(&shared.finished.0).is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let Some(session) = session() else { return };
                let guest_stream = stream_id(id, Stdio::Stdin);
                let result = if bytes.is_empty() {
                    session.close_input(guest_stream)
                } else {
                    session.send_data(guest_stream, &bytes)
                };
                if result.is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Message(Message::Resize { size, .. }))) => {
                if let Some(session) = session() {
                    let _ = session.notify(Message::Resize { id, size });
                }
            }
            Ok(Some(Frame::Message(Message::Signal { signal, .. }))) => {
                if let Some(session) = session() {
                    let _ = session.notify(Message::Signal { id, signal });
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

fn exec(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    process: bulkhead_proto::ProcessSpec,
    reader: BufReader<UnixStream>,
    mut writer: UnixStream,
) -> Result<(), Error> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let tty = process.tty.is_some();
    let stdin = process.stdin;
    let (exit_tx, exit_rx) = mpsc::channel();
    lock(&shared.exec_exits).insert(id, exit_tx);
    let mut outputs =
        vec![(stream_id(id, Stdio::Stdout), STDOUT, session.open_output(stream_id(id, Stdio::Stdout)))];
    if !tty {
        outputs.push((
            stream_id(id, Stdio::Stderr),
            STDERR,
            session.open_output(stream_id(id, Stdio::Stderr)),
        ));
    }
    match session.request(Message::Start { id, process }, REQUEST_TIMEOUT) {
        Ok(Message::Started { .. }) => {}
        Ok(Message::StartFailed { exit_code, message, .. }) => {
            lock(&shared.exec_exits).remove(&id);
            let _ = control::write_line(
                &mut writer,
                &Reply::Error { message: crate::session::clip(&message), exit_code: Some(exit_code) },
            );
            return Ok(());
        }
        Ok(other) => return Err(Error::Agent(format!("expected started, the guest sent {}", other.kind()))),
        Err(e) => {
            lock(&shared.exec_exits).remove(&id);
            let _ = control::write_line(
                &mut writer,
                &Reply::Error { message: e.to_string(), exit_code: Some(126) },
            );
            return Ok(());
        }
    }
    if stdin {
        session.open_input(stream_id(id, Stdio::Stdin));
    }
    control::write_line(&mut writer, &Reply::Ok).map_err(|e| Error::Agent(e.to_string()))?;
    let client: Client = Arc::new(Mutex::new(writer));
    let pumps: Vec<JoinHandle<()>> = outputs
        .into_iter()
        .map(|(guest_stream, client_stream, rx)| {
            let (session, client) = (Arc::clone(session), Arc::clone(&client));
            std::thread::spawn(move || {
                let mut connected = true;
                for chunk in rx {
                    if chunk.is_empty() {
                        break;
                    }
                    let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                    // A detached exec (or a client that left) still drains, so the process never blocks.
                    if connected {
                        connected =
                            send_frame(&client, &Frame::Data { stream: client_stream, bytes: chunk }).is_ok();
                    }
                    let _ = session.grant(guest_stream, len);
                }
            })
        })
        .collect();
    {
        let shared = Arc::clone(shared);
        std::thread::spawn(move || relay_input(&shared, FrameReader::new(reader), id, stdin));
    }
    let status = exit_rx.recv().unwrap_or(ExitStatus::Signal(9));
    for pump in pumps {
        let _ = pump.join();
    }
    let _ = send_frame(&client, &Frame::Message(Message::Exited { id, status }));
    Ok(())
}

fn copy(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    into_container: bool,
    path: String,
    reader: BufReader<UnixStream>,
    mut writer: UnixStream,
) -> Result<(), Error> {
    let stream = stream_id(shared.next_id.fetch_add(1, Ordering::SeqCst), Stdio::Stdin) | 3;
    let (done_tx, done_rx) = mpsc::channel();
    lock(&shared.copy_done).insert(stream, done_tx);
    let output = (!into_container).then(|| session.open_output(stream));
    let request =
        if into_container { Message::CopyIn { stream, path } } else { Message::CopyOut { stream, path } };
    match session.request(request, REQUEST_TIMEOUT) {
        Ok(Message::CopyStarted { .. }) => {}
        Ok(other) => {
            lock(&shared.copy_done).remove(&stream);
            let _ = control::write_line(
                &mut writer,
                &Reply::Error { message: format!("unexpected {}", other.kind()), exit_code: None },
            );
            return Ok(());
        }
        Err(e) => {
            lock(&shared.copy_done).remove(&stream);
            let _ =
                control::write_line(&mut writer, &Reply::Error { message: e.to_string(), exit_code: None });
            return Ok(());
        }
    }
    control::write_line(&mut writer, &Reply::Ok).map_err(|e| Error::Agent(e.to_string()))?;
    let client: Client = Arc::new(Mutex::new(writer));
    if into_container {
        session.open_input(stream);
        let mut frames = FrameReader::new(reader);
        loop {
            match frames.read_frame() {
                Ok(Some(Frame::Data { stream: COPY, bytes })) if !bytes.is_empty() => {
                    if session.send_data(stream, &bytes).is_err() {
                        break;
                    }
                }
                Ok(Some(Frame::Data { stream: COPY, .. })) | Ok(None) | Err(_) => {
                    let _ = session.close_input(stream);
                    break;
                }
                Ok(Some(_)) => {}
            }
        }
    } else if let Some(rx) = output {
        for chunk in rx {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let end = chunk.is_empty();
            let _ = send_frame(&client, &Frame::Data { stream: COPY, bytes: chunk });
            if end {
                break;
            }
            let _ = session.grant(stream, len);
        }
    }
    let error = done_rx
        .recv_timeout(Duration::from_secs(600))
        .unwrap_or_else(|_| Some("the copy did not finish".into()));
    let _ = send_frame(&client, &Frame::Message(Message::CopyDone { stream: COPY, error }));
    Ok(())
}

/// `stop`: the signal, then SIGKILL after `timeout`, then the VM itself.
fn stop(shared: &Shared, session: &Session, timeout: Duration, signal: i32) {
    let done = |wait: Duration| {
        let (finished, cv) = &shared.finished;
        let guard = lock(finished);
        cv.wait_timeout_while(guard, wait, |code| code.is_none()).map(|(g, _)| g.is_some()).unwrap_or(true)
    };
    let _ = session.notify(Message::Signal { id: MAIN, signal });
    if done(timeout) {
        return;
    }
    let _ = session.notify(Message::Signal { id: MAIN, signal: 9 });
    if done(KILL_GRACE) {
        return;
    }
    shared.force_stop.store(true, Ordering::SeqCst);
    done(Duration::from_secs(30));
}

fn send_frame(client: &Client, frame: &Frame) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(frame, &mut buf).map_err(std::io::Error::other)?;
    lock(client).write_all(&buf)
}

/// Resident memory of a host process, from `/proc/<pid>/status`.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
