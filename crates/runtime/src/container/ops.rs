//! What the container verbs do; the CLI only parses arguments and prints results.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_image::Store;
use bulkhead_proto::{ProcessSpec, Rlimit, WindowSize};
use serde_json::json;

use super::client::{self, StreamOptions};
use super::control::{self, Reply, Request};
use super::ids::{generated_name, new_id, short};
use super::monitor::Readiness;
use super::record::{ContainerConfig, Status};
use super::spec::{process_args, process_env, RestartPolicy};
use super::store::{Container, Containers};
use crate::{Error, Paths};

/// Everything `create` and `run` take from the command line.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's `Cmd`.
    pub cmd: Vec<String>,
    pub entrypoint: Option<String>,
    /// `KEY=value` entries from `-e` and `--env-file`, in order.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: Option<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub restart: RestartPolicy,
    pub auto_remove: bool,
    pub tty: bool,
    pub stdin: bool,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// `--network`, `-p`, `-P`, `--dns`, `--add-host`.
    pub network: crate::network::NetworkOptions,
    /// Boot the VM cold instead of restoring it from a template.
    pub no_template: bool,
}

/// Records a new container; returns its configuration.
pub fn create(paths: &Paths, options: &CreateOptions) -> Result<ContainerConfig, Error> {
    let store = Store::open(&paths.root)?;
    let image = store.resolve_image(&options.image)?;
    if image.kind == bulkhead_image::ImageKind::Kernel {
        return Err(Error::Invalid(format!("{} is a kernel image; run it with --kernel {0}", options.image)));
    }
    let kernel = bulkhead_image::kernel::resolve(&store, options.kernel.as_deref())?;
    let root_disk = bulkhead_image::disk::root_disk(&store, image.digest.as_str())?;
    if options.restart != RestartPolicy::No && options.auto_remove {
        return Err(Error::Invalid("conflicting options: --restart and --rm".into()));
    }
    for path in &options.tmpfs {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(Error::Invalid(format!("invalid --tmpfs {path:?}: expected an absolute path")));
        }
    }
    let id = new_id().map_err(Error::io("reading", "/dev/urandom"))?;
    let name = options.name.clone().unwrap_or_else(|| generated_name(&id));
    let hostname = options.hostname.clone().unwrap_or_else(|| short(&id).to_owned());
    if hostname.is_empty()
        || hostname.len() > 64
        || !hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(Error::Invalid(format!("invalid hostname {hostname:?}")));
    }
    let args = process_args(&image.config, options.entrypoint.as_deref(), &options.cmd)?;
    let cwd = options.workdir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| {
        if image.config.working_dir.is_empty() {
            "/".into()
        } else {
            image.config.working_dir.clone()
        }
    });
    if !cwd.starts_with('/') {
        return Err(Error::Invalid(format!("the working directory {cwd:?} is not an absolute path")));
    }
    let network = crate::network::create(paths, &options.network, &id, &image.config.exposed_ports)?;
    let config = ContainerConfig {
        id: id.clone(),
        name,
        created: super::logs::now_rfc3339(),
        image: options.image.clone(),
        image_digest: image.digest.to_string(),
        root_disk,
        kernel: options.kernel.clone().unwrap_or_else(|| "default".into()),
        kernel_digest: kernel.digest.clone(),
        kernel_path: kernel.path.clone(),
        accel: if options.accel.is_empty() { "auto".into() } else { options.accel.clone() },
        process: ProcessSpec {
            args,
            env: process_env(&image.config.env, &options.env, &hostname),
            cwd,
            user: options.user.clone().unwrap_or_else(|| image.config.user.clone()),
            rlimits: vec![Rlimit { resource: "nofile".into(), soft: 1_048_576, hard: 1_048_576 }],
            tty: options.tty.then_some(WindowSize { rows: 24, cols: 80 }),
            stdin: options.stdin,
        },
        hostname,
        memory_mib: options.memory_mib,
        vcpus: options.vcpus.max(1),
        read_only: options.read_only,
        tmpfs: options.tmpfs.clone(),
        restart: options.restart,
        auto_remove: options.auto_remove,
        no_template: options.no_template,
        network,
    };
    let release = |_: &Error| crate::network::release(paths, &config.id, &config.network);
    let cow = cow_template(paths, &config.root_disk).inspect_err(release)?;
    Containers::new(paths)
        .create(&config, &|dir| {
            let to = dir.join(ROOT_DISK_FILE);
            std::fs::copy(&cow, &to).map(drop).map_err(Error::io("copying the container's disk to", &to))
        })
        .inspect_err(release)?;
    Ok(config)
}

/// The container's own disk in its directory: copy-on-write over the image's root disk.
pub(crate) const ROOT_DISK_FILE: &str = "root.qcow2";

/// An empty qcow2 image backed by `root_disk`, made once per root disk with `qemu-img` and
/// copied (it is a few hundred KiB) for each container.
pub(crate) fn cow_template(paths: &Paths, root_disk: &Path) -> Result<PathBuf, Error> {
    let dir = paths.cache_dir().join("cow");
    let name = root_disk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = dir.join(format!("{name}.qcow2"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let tmp = tempfile::Builder::new()
        .suffix(".qcow2")
        .tempfile_in(&dir)
        .map_err(Error::io("creating a temporary file in", &dir))?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(root_disk)
        .arg(tmp.path())
        .output()
        .map_err(Error::io("running qemu-img (install qemu-utils) for", tmp.path()))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "qemu-img create over {} failed: {}",
            root_disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tmp.persist(&path).map_err(|e| Error::Io { what: "installing", path: path.clone(), source: e.error })?;
    Ok(path)
}

/// Starts a created or exited container by spawning its monitor. With `wait_attach`, returns
/// once the VM is up and the monitor waits for an attach to start the main process.
pub fn start(paths: &Paths, name: &str, wait_attach: bool) -> Result<(String, Readiness), Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let _lock = containers.lock(&id)?;
    let container = containers.load(&id)?;
    if matches!(container.state.status, Status::Running | Status::Restarting)
        || containers.monitor_alive(&id, &container.state)
    {
        return Ok((id, Readiness::Started));
    }
    let mut state = container.state;
    state.stopped_by_user = false;
    state.restart_count = 0;
    containers.save_state(&id, &state)?;
    let readiness = spawn_monitor(paths, &containers, &id, wait_attach)?;
    Ok((id, readiness))
}

fn spawn_monitor(
    paths: &Paths,
    containers: &Containers,
    id: &str,
    wait_attach: bool,
) -> Result<Readiness, Error> {
    let exe = std::env::current_exe().map_err(Error::io("finding", "the bulkhead executable"))?;
    let log_path = containers.dir(id).join("monitor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(Error::io("opening", &log_path))?;
    let mut command = Command::new(&exe);
    command.arg("--root").arg(&paths.root).arg("--run-root").arg(&paths.run_root).arg("monitor").arg(id);
    if wait_attach {
        command.arg("--wait-attach");
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // SAFETY: setsid(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // Its own session: the monitor outlives this command and its terminal.
            nix::unistd::setsid().map(drop).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(Error::io("starting the monitor", &exe))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Agent("monitor has no stdout".into()))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(Error::io("reading from the monitor", &log_path))?;
    // The monitor lives on; its exit status is of no interest to this process.
    std::thread::spawn(move || child.wait());
    match serde_json::from_str::<Readiness>(&line) {
        Ok(Readiness::Failed { message, exit_code }) => Err(Error::StartFailed { exit_code, message }),
        Ok(ready) => Ok(ready),
        Err(_) => {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("no output").to_owned();
            Err(Error::Agent(format!("the monitor failed to start: {last} (see {})", log_path.display())))
        }
    }
}

/// Attaches to a running container until its main process ends; returns the exit code.
pub fn attach(paths: &Paths, name: &str, options: StreamOptions) -> Result<i32, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let (reply, connection) =
        control::call(&containers.monitor_socket(&id), &Request::Attach { stdin: options.stdin })
            .map_err(|_| Error::Conflict(format!("container {} is not running", short(&id))))?;
    match reply {
        Reply::Ok => client::stream(connection, options),
        Reply::Error { message, exit_code } => Err(error_reply(message, exit_code)),
        other => Err(Error::Agent(format!("unexpected reply {other:?}"))),
    }
}

/// What `exec` runs.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    pub detach: bool,
}

/// Runs a process in a running container; returns its exit code (0 at once when detached).
pub fn exec(paths: &Paths, name: &str, options: &ExecOptions) -> Result<i32, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let container = containers.load(&id)?;
    if container.state.status != Status::Running {
        return Err(Error::Conflict(format!("container {} is not running", short(&id))));
    }
    if options.cmd.is_empty() {
        return Err(Error::Invalid("exec needs a command".into()));
    }
    let main = &container.config.process;
    let process = ProcessSpec {
        args: options.cmd.clone(),
        env: process_env(&main.env, &options.env, &container.config.hostname),
        cwd: options.workdir.clone().unwrap_or_else(|| main.cwd.clone()),
        user: options.user.clone().unwrap_or_else(|| main.user.clone()),
        rlimits: main.rlimits.clone(),
        tty: options.tty.then_some(WindowSize { rows: 24, cols: 80 }),
        stdin: options.stdin && !options.detach,
    };
    let (reply, connection) = control::call(&containers.monitor_socket(&id), &Request::Exec { process })?;
    match reply {
        Reply::Ok if options.detach => Ok(0),
        Reply::Ok => client::stream(connection, StreamOptions { stdin: options.stdin, tty: options.tty }),
        Reply::Error { message, exit_code } => Err(error_reply(message, exit_code)),
        other => Err(Error::Agent(format!("unexpected reply {other:?}"))),
    }
}

fn error_reply(message: String, exit_code: Option<i32>) -> Error {
    match exit_code {
        Some(exit_code) => Error::StartFailed { exit_code, message },
        None => Error::Agent(message),
    }
}

/// `run`: create, start and (unless detached) attach; returns the ID and, when attached, the
/// exit code.
pub fn run(paths: &Paths, options: &CreateOptions, detach: bool) -> Result<(String, Option<i32>), Error> {
    tracing::debug!("run: creating");
    let config = create(paths, options)?;
    tracing::debug!("run: created");
    if detach {
        start(paths, &config.id, false).inspect_err(|_| cleanup_failed_run(paths, &config))?;
        return Ok((config.id, None));
    }
    if let Err(e) = start(paths, &config.id, true) {
        cleanup_failed_run(paths, &config);
        return Err(e);
    }
    tracing::debug!("run: monitor ready");
    let code = attach(paths, &config.id, StreamOptions { stdin: options.stdin, tty: options.tty });
    tracing::debug!("run: detached");
    if options.auto_remove {
        wait_removed(paths, &config.id);
        tracing::debug!("run: removed");
    }
    code.map(|code| (config.id, Some(code)))
}

fn cleanup_failed_run(paths: &Paths, config: &ContainerConfig) {
    if config.auto_remove {
        let containers = Containers::new(paths);
        if let Ok(_lock) = containers.lock(&config.id) {
            let _ = containers.remove(&config.id);
        }
    }
}

/// `--rm`: the monitor removes the container as it exits; wait for that so the next command
/// does not see it.
fn wait_removed(paths: &Paths, id: &str) {
    let dir = Containers::new(paths).dir(id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stops a running container: `signal`, then SIGKILL after `timeout`, then the VM.
pub fn stop(paths: &Paths, name: &str, timeout: Duration) -> Result<String, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let container = containers.load(&id)?;
    if !matches!(container.state.status, Status::Running | Status::Restarting) {
        return Ok(id);
    }
    let signal = 15;
    let request = Request::Stop { timeout_s: timeout.as_secs(), signal };
    if let Ok((Reply::Error { message, .. }, _)) = control::call(&containers.monitor_socket(&id), &request) {
        return Err(Error::Agent(message));
    }
    wait_not_running(&containers, &id, timeout + Duration::from_secs(60))?;
    Ok(id)
}

/// Sends a signal to the main process.
pub fn kill(paths: &Paths, name: &str, signal: i32) -> Result<String, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    if containers.load(&id)?.state.status != Status::Running {
        return Err(Error::Conflict(format!("container {} is not running", short(&id))));
    }
    match control::call(&containers.monitor_socket(&id), &Request::Kill { signal })?.0 {
        Reply::Ok => Ok(id),
        Reply::Error { message, .. } => Err(Error::Agent(message)),
        other => Err(Error::Agent(format!("unexpected reply {other:?}"))),
    }
}

/// Blocks until the container is no longer running; returns its exit code.
pub fn wait(paths: &Paths, name: &str) -> Result<i32, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    wait_not_running(&containers, &id, Duration::MAX)
}

fn wait_not_running(containers: &Containers, id: &str, timeout: Duration) -> Result<i32, Error> {
    let start = Instant::now();
    loop {
        let container = containers.load(id)?;
        if !matches!(container.state.status, Status::Running | Status::Restarting) {
            return Ok(container.state.exit_code.unwrap_or(0));
        }
        if start.elapsed() > timeout {
            return Err(Error::AgentTimeout {
                stage: "stop",
                seconds: timeout.as_secs(),
                detail: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a container; a running one only with `force` (its monitor and VM are killed).
pub fn remove(paths: &Paths, name: &str, force: bool) -> Result<String, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let _lock = containers.lock(&id)?;
    let container = containers.load(&id)?;
    let running = containers.monitor_alive(&id, &container.state);
    if running && !force {
        return Err(Error::Conflict(format!(
            "cannot remove running container {}: stop it first or use rm -f",
            short(&id)
        )));
    }
    if running {
        kill_monitor(&containers, &id, &container);
    }
    crate::network::release(paths, &id, &container.config.network);
    containers.remove(&id)?;
    Ok(id)
}

/// SIGKILLs the monitor; its VM dies with it (PR_SET_PDEATHSIG), which is checked, not assumed.
fn kill_monitor(containers: &Containers, id: &str, container: &Container) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pids = [container.state.monitor_pid, container.state.vm_pid];
    if let Some(pid) = container.state.monitor_pid.and_then(|p| i32::try_from(p).ok()) {
        if containers.monitor_alive(id, &container.state) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids.into_iter().flatten() {
        while process_mentions(pid, id) && Instant::now() < deadline {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether `pid` is alive and its command line mentions `id` (so it is still ours).
fn process_mentions(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(id.len()).any(|w| w == id.as_bytes()))
        .unwrap_or(false)
}

/// `restart`: stop (if running), then start detached.
pub fn restart(paths: &Paths, name: &str, timeout: Duration) -> Result<String, Error> {
    let id = stop(paths, name, timeout)?;
    start(paths, &id, false)?;
    Ok(id)
}

/// Containers, newest first; only running ones unless `all`.
/// The digests (hex) of the images and kernels that containers use, running or not: their root
/// disks and kernels must outlive the images' names.
pub fn images_in_use(paths: &Paths) -> Result<std::collections::HashSet<String>, Error> {
    let mut in_use = std::collections::HashSet::new();
    for container in list(paths, true)? {
        for digest in [&container.config.image_digest, &container.config.kernel_digest] {
            in_use.insert(digest.strip_prefix("sha256:").unwrap_or(digest).to_owned());
        }
    }
    Ok(in_use)
}

pub fn list(paths: &Paths, all: bool) -> Result<Vec<Container>, Error> {
    let containers = Containers::new(paths);
    let mut out = Vec::new();
    for id in containers.ids()? {
        match containers.load(&id) {
            Ok(c) if all || c.state.status == Status::Running => out.push(c),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping container {id}"),
        }
    }
    out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
    Ok(out)
}

/// `inspect`: configuration, state, the VM and the start phases, as JSON.
pub fn inspect(paths: &Paths, name: &str) -> Result<serde_json::Value, Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let Container { config, state } = containers.load(&id)?;
    Ok(json!({
        "Id": config.id,
        "Name": config.name,
        "Created": config.created,
        "Image": config.image,
        "ImageDigest": config.image_digest,
        "Config": {
            "Cmd": config.process.args,
            "Env": config.process.env,
            "WorkingDir": config.process.cwd,
            "User": config.process.user,
            "Tty": config.process.tty.is_some(),
            "OpenStdin": config.process.stdin,
            "Hostname": config.hostname,
        },
        "HostConfig": {
            "Memory": u64::from(config.memory_mib) << 20,
            "Cpus": config.vcpus,
            "ReadonlyRootfs": config.read_only,
            "Tmpfs": config.tmpfs,
            "RestartPolicy": config.restart.to_string(),
            "AutoRemove": config.auto_remove,
        },
        "State": {
            "Status": state.status.as_str(),
            "Running": state.status == Status::Running,
            "ExitCode": state.exit_code.unwrap_or(0),
            "Error": state.error.unwrap_or_default(),
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
            "RestartCount": state.restart_count,
            "MonitorPid": state.monitor_pid,
        },
        "VM": {
            "Accelerator": state.accel,
            "AcceleratorReason": state.accel_reason,
            "MemoryMiB": config.memory_mib,
            "VCPUs": config.vcpus,
            "Kernel": config.kernel,
            "KernelDigest": config.kernel_digest,
            "RootDisk": config.root_disk,
            "Pid": state.vm_pid,
            "ConsoleLog": containers.dir(&id).join("console.log"),
        },
        "StartPhases": state.phases,
        "StartPath": state.start_path,
        "NetworkSettings": crate::network::inspect(paths, &id, &config.network),
    }))
}

/// `stats` of a running container.
pub fn stats(paths: &Paths, name: &str) -> Result<(String, Reply), Error> {
    simple_request(paths, name, &Request::Stats)
}

/// `top` of a running container.
pub fn top(paths: &Paths, name: &str) -> Result<(String, Reply), Error> {
    simple_request(paths, name, &Request::Top)
}

fn simple_request(paths: &Paths, name: &str, request: &Request) -> Result<(String, Reply), Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    if containers.load(&id)?.state.status != Status::Running {
        return Err(Error::Conflict(format!("container {} is not running", short(&id))));
    }
    match control::call(&containers.monitor_socket(&id), request)?.0 {
        Reply::Error { message, .. } => Err(Error::Agent(message)),
        reply => Ok((id, reply)),
    }
}

/// Prints the log; with `follow`, keeps printing until the container stops.
pub fn logs(paths: &Paths, name: &str, follow: bool, options: super::logs::ReadOptions) -> Result<(), Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let path = containers.log_path(&id);
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    let position =
        super::logs::print(&path, options, &mut out, &mut err).map_err(Error::io("reading", &path))?;
    if follow {
        let done = || containers.load(&id).map(|c| c.state.status != Status::Running).unwrap_or(true);
        let options = super::logs::ReadOptions { tail: None, ..options };
        super::logs::follow(&path, position, options, &mut out, &mut err, &done)
            .map_err(Error::io("reading", &path))?;
    }
    out.flush().map_err(Error::io("writing", "stdout"))
}

/// `container prune`: removes every container that is not running; returns their IDs.
pub fn prune(paths: &Paths) -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for container in list(paths, true)? {
        if !matches!(container.state.status, Status::Running | Status::Restarting) {
            remove(paths, &container.config.id, false)?;
            removed.push(container.config.id);
        }
    }
    Ok(removed)
}

/// `cp HOST CONTAINER:DEST`: `DEST/` (or `DEST` naming a directory with a trailing slash)
/// receives the source under its own name; otherwise the source is stored as `DEST`.
pub fn copy_in(paths: &Paths, name: &str, source: &Path, dest: &str) -> Result<(), Error> {
    use bulkhead_proto::{encode, Frame};
    let (dir, entry_name) = match dest.strip_suffix('/') {
        Some(dir) => (if dir.is_empty() { "/" } else { dir }.to_owned(), file_name(source)?),
        None => {
            let (parent, leaf) = dest.rsplit_once('/').unwrap_or((".", dest));
            (if parent.is_empty() { "/" } else { parent }.to_owned(), leaf.to_owned())
        }
    };
    let meta = std::fs::symlink_metadata(source).map_err(Error::io("reading", source))?;
    let mut archive =
        tar::Builder::new(tempfile::tempfile().map_err(Error::io("creating", "a temporary file"))?);
    archive.follow_symlinks(false);
    let appended = if meta.is_dir() {
        archive.append_dir_all(&entry_name, source)
    } else {
        archive.append_path_with_name(source, &entry_name)
    };
    appended.map_err(Error::io("archiving", source))?;
    let mut file = archive.into_inner().map_err(Error::io("archiving", source))?;
    use std::io::{Read, Seek};
    file.rewind().map_err(Error::io("reading", "the archive"))?;

    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let (reply, connection) = control::call(&containers.monitor_socket(&id), &Request::CopyIn { path: dir })?;
    if let Reply::Error { message, .. } = reply {
        return Err(Error::Agent(message));
    }
    let mut writer = connection.get_ref().try_clone().map_err(|e| Error::Agent(e.to_string()))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk).map_err(Error::io("reading", "the archive"))?;
        let mut buf = Vec::new();
        encode(&Frame::Data { stream: control::COPY, bytes: chunk[..n].to_vec() }, &mut buf)
            .map_err(|e| Error::Agent(e.to_string()))?;
        writer.write_all(&buf).map_err(|e| Error::Agent(format!("sending to the monitor: {e}")))?;
        if n == 0 {
            break;
        }
    }
    copy_result(connection, None)
}

/// `cp CONTAINER:SRC HOST`: into `HOST` if it is a directory, else as `HOST`.
pub fn copy_out(paths: &Paths, name: &str, source: &str, dest: &Path) -> Result<(), Error> {
    let containers = Containers::new(paths);
    let id = containers.resolve(name)?;
    let (reply, connection) =
        control::call(&containers.monitor_socket(&id), &Request::CopyOut { path: source.to_owned() })?;
    if let Reply::Error { message, .. } = reply {
        return Err(Error::Agent(message));
    }
    let mut archive = tempfile::tempfile().map_err(Error::io("creating", "a temporary file"))?;
    copy_result(connection, Some(&mut archive))?;
    use std::io::Seek;
    archive.rewind().map_err(Error::io("reading", "the archive"))?;
    let leaf = source
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("root")
        .to_owned();
    // The archive comes from the guest: tar's unpack keeps every entry inside the target.
    if dest.is_dir() {
        tar::Archive::new(archive).unpack(dest).map_err(Error::io("unpacking into", dest))?;
        return Ok(());
    }
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = tempfile::tempdir_in(parent).map_err(Error::io("creating a directory in", parent))?;
    tar::Archive::new(archive).unpack(staging.path()).map_err(Error::io("unpacking into", staging.path()))?;
    let got = staging.path().join(&leaf);
    std::fs::rename(&got, dest).map_err(Error::io("placing", dest))
}

/// Reads a copy's frames: the archive (for a copy out) into `sink`, then the outcome.
fn copy_result(
    connection: BufReader<std::os::unix::net::UnixStream>,
    mut sink: Option<&mut std::fs::File>,
) -> Result<(), Error> {
    use bulkhead_proto::{Frame, FrameReader, Message};
    let mut frames = FrameReader::new(connection);
    loop {
        match frames.read_frame() {
            Ok(Some(Frame::Data { bytes, .. })) => {
                if let Some(sink) = sink.as_deref_mut() {
                    sink.write_all(&bytes).map_err(Error::io("writing", "the archive"))?;
                }
            }
            Ok(Some(Frame::Message(Message::CopyDone { error: None, .. }))) => return Ok(()),
            Ok(Some(Frame::Message(Message::CopyDone { error: Some(e), .. }))) => {
                return Err(Error::Agent(format!("copy failed in the container: {e}")))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::Agent("the monitor closed the connection during the copy".into())),
            Err(e) => return Err(Error::Agent(e.to_string())),
        }
    }
}

fn file_name(path: &Path) -> Result<String, Error> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::Invalid(format!("{} has no file name to copy under", path.display())))
}

/// `template warm`: makes (or finds) the template a container with these settings would use.
pub fn warm_template(
    paths: &Paths,
    memory_mib: u32,
    vcpus: u32,
    kernel: Option<&str>,
    network: &str,
) -> Result<crate::template::Template, Error> {
    let store = Store::open(&paths.root)?;
    let kernel = bulkhead_image::kernel::resolve(&store, kernel)?;
    let guest_binary = crate::guest::find_guest_binary()?;
    let initramfs = crate::guest::initramfs(paths, &guest_binary)?;
    let accel =
        bulkhead_vmm::choose_accel(bulkhead_vmm::AccelRequest::Auto, &bulkhead_vmm::HostFacts::probe())?;
    let mac = "02:42:00:00:00:01".to_owned();
    let net = match network {
        "none" => None,
        "user" => Some(bulkhead_vmm::NetDevice::User { mac, forwards: Vec::new() }),
        _ => Some(bulkhead_vmm::NetDevice::Tap { ifname: "unused".into(), mac }),
    };
    let config = crate::sandbox::SandboxConfig {
        qemu: None,
        kernel: kernel.path,
        initramfs,
        memory_mib,
        vcpus,
        accel: accel.accel,
        // The template makes its own placeholder disks from the layout below.
        disks: Vec::new(),
        cmdline: crate::tcg::guest_cmdline(paths, accel.accel),
        run_dir: paths.run_root.clone(),
        console_log: paths.run_root.join("unused.log"),
        ready_timeout: Duration::from_secs(60),
        net,
    };
    // A container's disk: its copy-on-write root, as large as a root disk of an image that fits.
    let layout = vec![("rw".to_owned(), bulkhead_image::disk::ROOT_DISK_BYTES)];
    let meta =
        crate::template::meta_for(&config, layout, &kernel.digest, &crate::template::qemu_version(paths)?);
    crate::template::ensure(paths, &config, &meta)
}
