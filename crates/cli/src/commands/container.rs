//! The container verbs: `run`, `create`, `start`, `ps`, `logs`, `exec`, `attach`, `stop`,
//! `kill`, `restart`, `wait`, `rm`, `inspect`, `top`, `stats`, `cp`, `container prune`, and the
//! hidden `monitor` that supervises one container.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bulkhead_runtime::container::client::StreamOptions;
use bulkhead_runtime::container::control::Reply;
use bulkhead_runtime::container::ids::short;
use bulkhead_runtime::container::logs::ReadOptions;
use bulkhead_runtime::container::spec::{self, RestartPolicy};
use bulkhead_runtime::container::{self as ops, CreateOptions, ExecOptions, Status};
use bulkhead_runtime::Error;
use clap::{Args, Subcommand};

use super::output::{table, Format};
use crate::Cli;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=value, or KEY to pass bulkhead's own value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=value lines).
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// USER[:GROUP], names or numbers from the container's /etc/passwd and /etc/group.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// VM memory, e.g. 256m or 1g (at least 64m).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// vCPUs (rounded up).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Kernel image to boot (default: the store's default kernel).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Mount a fresh tmpfs at this path.
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Boot the VM cold instead of restoring it from a template.
    #[arg(long)]
    pub no_template: bool,
    #[command(flatten)]
    pub net: super::network::NetworkArgs,
    pub image: String,
    /// The command and its arguments (replaces the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the output and wait for the exit.
    #[arg(short, long)]
    pub attach: bool,
    /// Forward stdin (with -a).
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, short = 'n')]
    pub tail: Option<usize>,
    /// Prefix lines with their time.
    #[arg(short, long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(short, long)]
    pub detach: bool,
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not forward stdin.
    #[arg(long)]
    pub no_stdin: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill and remove a running container.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct OneArgs {
    pub container: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// SRC: a host path or CONTAINER:PATH.
    pub source: String,
    /// DEST: a host path or CONTAINER:PATH.
    pub destination: String,
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Remove all containers that are not running.
    Prune,
    /// List containers (like `ps`).
    Ls(PsArgs),
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Make the template a container with these settings would use, if it does not exist.
    Warm {
        #[arg(short, long, default_value = "256m")]
        memory: String,
        #[arg(long, default_value = "1")]
        cpus: String,
        #[arg(long)]
        kernel: Option<String>,
        /// The network kind of the containers it is for: bridge, none or user.
        #[arg(long, env = "BULKHEAD_NETWORK", default_value = "bridge")]
        network: String,
    },
    /// List templates.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove templates by key (or unique key prefix).
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove all templates (they are rebuilt on the next start).
    Prune,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    pub id: String,
    /// Start the main process only once a client attached.
    #[arg(long)]
    pub wait_attach: bool,
}

/// Every container verb, flattened into the top-level command.
#[derive(Debug, Subcommand)]
pub enum ContainerVerb {
    /// Create a container from an image and run it.
    Run(Box<CreateArgs>),
    /// Create a container without starting it.
    Create(Box<CreateArgs>),
    /// Start created or stopped containers.
    Start(StartArgs),
    /// List containers.
    Ps(PsArgs),
    /// Print a container's output.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Attach to a running container's main process.
    Attach(AttachArgs),
    /// Stop containers: SIGTERM, then SIGKILL after a timeout, then the VM.
    Stop(StopArgs),
    /// Send a signal to containers' main processes.
    Kill(KillArgs),
    /// Stop and start containers.
    Restart(StopArgs),
    /// Wait for containers to stop; print their exit codes.
    Wait(NamesArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Configuration, state, VM and start phases of containers, as JSON.
    Inspect(NamesArgs),
    /// Processes running inside a container's VM.
    Top(OneArgs),
    /// CPU, memory and pids of running containers, from inside their VMs, and the VM's host RSS.
    Stats(StatsArgs),
    /// Copy files between a container and the host.
    Cp(CpArgs),
    /// Manage containers.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Manage VM templates (booted VMs saved once, restored for each container start).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Supervise one container (started by bulkhead itself).
    #[command(hide = true)]
    Monitor(MonitorArgs),
}

pub fn run(cli: &Cli, verb: &ContainerVerb) -> anyhow::Result<ExitCode> {
    let paths = cli.paths();
    let result = match verb {
        ContainerVerb::Run(args) => run_container(cli, args),
        ContainerVerb::Create(args) => {
            let config = ops::create(&paths, &create_options(args)?)?;
            println!("{}", config.id);
            Ok(ExitCode::SUCCESS)
        }
        ContainerVerb::Start(args) => start(cli, args),
        ContainerVerb::Ps(args) => ps(cli, args),
        ContainerVerb::Logs(args) => {
            let options = ReadOptions { tail: args.tail, timestamps: args.timestamps };
            ops::logs(&paths, &args.container, args.follow, options)?;
            Ok(ExitCode::SUCCESS)
        }
        ContainerVerb::Exec(args) => {
            let env = env_entries(&args.env, &[])?;
            let options = ExecOptions {
                cmd: args.command.clone(),
                env,
                workdir: args.workdir.clone(),
                user: args.user.clone(),
                tty: args.tty,
                stdin: args.interactive,
                detach: args.detach,
            };
            ops::exec(&paths, &args.container, &options).map(exit_code).map_err(Into::into)
        }
        ContainerVerb::Attach(args) => {
            let tty = ops::inspect(&paths, &args.container)?["Config"]["Tty"].as_bool().unwrap_or(false);
            let options = StreamOptions { stdin: !args.no_stdin, tty };
            ops::attach(&paths, &args.container, options).map(exit_code).map_err(Into::into)
        }
        ContainerVerb::Stop(args) => {
            each(&args.containers, |c| ops::stop(&paths, c, Duration::from_secs(args.time)))
        }
        ContainerVerb::Restart(args) => {
            each(&args.containers, |c| ops::restart(&paths, c, Duration::from_secs(args.time)))
        }
        ContainerVerb::Kill(args) => {
            let signal = spec::parse_signal(&args.signal)?;
            each(&args.containers, |c| ops::kill(&paths, c, signal))
        }
        ContainerVerb::Wait(args) => {
            let mut failed = false;
            for name in &args.containers {
                match ops::wait(&paths, name) {
                    Ok(code) => println!("{code}"),
                    Err(e) => {
                        eprintln!("bulkhead: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        ContainerVerb::Rm(args) => each(&args.containers, |c| ops::remove(&paths, c, args.force)),
        ContainerVerb::Inspect(args) => {
            let mut out = Vec::new();
            for name in &args.containers {
                out.push(ops::inspect(&paths, name)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        ContainerVerb::Top(args) => top(cli, args),
        ContainerVerb::Stats(args) => stats(cli, args),
        ContainerVerb::Cp(args) => cp(cli, args),
        ContainerVerb::Container(ContainerCommand::Prune) => {
            for id in ops::prune(&paths)? {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ContainerVerb::Container(ContainerCommand::Ls(args)) => ps(cli, args),
        ContainerVerb::Template(command) => template(cli, command),
        ContainerVerb::Monitor(args) => {
            let code = bulkhead_runtime::container::monitor::run(
                &paths,
                &args.id,
                args.wait_attach,
                Box::new(ReadyPipe),
            );
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    };
    result.or_else(|e: anyhow::Error| match e.downcast_ref::<Error>() {
        // Docker's codes: 126 cannot execute, 127 not found, 125 for bulkhead's own failures.
        Some(Error::StartFailed { exit_code, message }) => {
            eprintln!("bulkhead: {message}");
            Ok(ExitCode::from(u8::try_from(*exit_code).unwrap_or(125)))
        }
        _ => Err(e),
    })
}

/// The monitor's readiness line goes to its stdout, which is then closed so the starting
/// command stops waiting.
struct ReadyPipe;

impl std::io::Write for ReadyPipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        // Detach stdout from the pipe: the reader sees end of file after the line.
        if buf.ends_with(b"\n") {
            let null = std::fs::File::options().write(true).open("/dev/null")?;
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1).map_err(std::io::Error::from)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

fn each(names: &[String], mut op: impl FnMut(&str) -> Result<String, Error>) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match op(name) {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("bulkhead: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn env_entries(args: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading env file {}", file.display()))?;
        env.extend(spec::parse_env_file(&text, &file.display().to_string())?);
    }
    for arg in args {
        env.extend(spec::env_arg(arg)?);
    }
    Ok(env)
}

fn create_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    Ok(CreateOptions {
        image: args.image.clone(),
        name: args.name.clone(),
        cmd: args.command.clone(),
        entrypoint: args.entrypoint.clone(),
        env: env_entries(&args.env, &args.env_file)?,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        memory_mib: args
            .memory
            .as_deref()
            .map(spec::parse_memory)
            .transpose()?
            .unwrap_or(spec::DEFAULT_MEMORY_MIB),
        vcpus: args.cpus.as_deref().map(spec::parse_cpus).transpose()?.unwrap_or(1),
        kernel: args.kernel.clone(),
        read_only: args.read_only,
        tmpfs: args.tmpfs.clone(),
        restart: args.restart.parse::<RestartPolicy>()?,
        auto_remove: args.rm,
        no_template: args.no_template,
        tty: args.tty,
        stdin: args.interactive,
        accel: args
            .accel
            .parse::<bulkhead_vmm::AccelRequest>()
            .map(|_| args.accel.clone())
            .map_err(anyhow::Error::msg)?,
        network: args.net.options(),
    })
}

fn run_container(cli: &Cli, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let (id, code) = ops::run(&cli.paths(), &create_options(args)?, args.detach)?;
    match code {
        None => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Some(code) => Ok(exit_code(code)),
    }
}

fn start(cli: &Cli, args: &StartArgs) -> anyhow::Result<ExitCode> {
    let paths = cli.paths();
    if args.attach {
        let [name] = args.containers.as_slice() else {
            anyhow::bail!("start -a takes exactly one container");
        };
        let (id, _) = ops::start(&paths, name, true)?;
        let tty = ops::inspect(&paths, &id)?["Config"]["Tty"].as_bool().unwrap_or(false);
        return Ok(exit_code(ops::attach(&paths, &id, StreamOptions { stdin: args.interactive, tty })?));
    }
    each(&args.containers, |name| ops::start(&paths, name, false).map(|(id, _)| id))
}

fn ps(cli: &Cli, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let containers = ops::list(&cli.paths(), args.all)?;
    if args.quiet {
        for c in &containers {
            println!("{}", short(&c.config.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == Format::Json {
        let rows: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "ID": c.config.id, "Name": c.config.name, "Image": c.config.image,
                    "Command": c.config.process.args, "Created": c.config.created,
                    "State": c.state.status.as_str(), "ExitCode": c.state.exit_code,
                    "Status": status_text(c),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            let command = c.config.process.args.join(" ");
            let command: String = command.chars().take(30).collect();
            vec![
                short(&c.config.id).to_owned(),
                c.config.image.clone(),
                format!("\"{command}\""),
                c.config.created.get(..19).unwrap_or(&c.config.created).replace('T', " "),
                status_text(c),
                c.config.name.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], &rows));
    Ok(ExitCode::SUCCESS)
}

fn status_text(c: &ops::Container) -> String {
    match c.state.status {
        Status::Running => "Up".into(),
        Status::Created => match &c.state.error {
            Some(_) => format!("Created (failed: exit {})", c.state.exit_code.unwrap_or(125)),
            None => "Created".into(),
        },
        Status::Restarting => format!("Restarting ({})", c.state.exit_code.unwrap_or(0)),
        Status::Exited => format!("Exited ({})", c.state.exit_code.unwrap_or(0)),
    }
}

fn top(cli: &Cli, args: &OneArgs) -> anyhow::Result<ExitCode> {
    let (_, reply) = ops::top(&cli.paths(), &args.container)?;
    let Reply::Top { processes } = reply else { anyhow::bail!("unexpected reply from the monitor") };
    let rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
            let secs = p.cpu_ms / 1000;
            vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                p.user.clone(),
                format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                format!("{}", p.rss_bytes / 1024),
                p.command.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["PID", "PPID", "USER", "TIME", "RSS(KiB)", "COMMAND"], &rows));
    Ok(ExitCode::SUCCESS)
}

fn stats(cli: &Cli, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let paths = cli.paths();
    let mut previous: std::collections::HashMap<String, (u64, std::time::Instant)> = Default::default();
    loop {
        let mut rows = Vec::new();
        let mut json = Vec::new();
        for name in &args.containers {
            let (id, reply) = ops::stats(&paths, name)?;
            let Reply::Stats { guest, vm_rss_bytes, monitor_rss_bytes } = reply else {
                anyhow::bail!("unexpected reply from the monitor")
            };
            let now = std::time::Instant::now();
            let cpu = previous.get(&id).map_or(0.0, |(cpu, at)| {
                let used = guest.cpu_usage_ns.saturating_sub(*cpu) as f64;
                used / (now - *at).as_nanos().max(1) as f64 * 100.0
            });
            previous.insert(id.clone(), (guest.cpu_usage_ns, now));
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            rows.push(vec![
                short(&id).to_owned(),
                format!("{cpu:.2}%"),
                format!("{:.1}MiB / {:.1}MiB", mib(guest.memory_used_bytes), mib(guest.memory_total_bytes)),
                guest.pids.to_string(),
                format!("{:.1}MiB", mib(vm_rss_bytes)),
                format!("{:.1}MiB", mib(monitor_rss_bytes)),
            ]);
            json.push(serde_json::json!({
                "ID": id, "CPUPercent": cpu, "CPUUsageNs": guest.cpu_usage_ns,
                "MemoryUsedBytes": guest.memory_used_bytes, "MemoryTotalBytes": guest.memory_total_bytes,
                "Pids": guest.pids, "VMHostRSSBytes": vm_rss_bytes, "MonitorRSSBytes": monitor_rss_bytes,
            }));
        }
        if args.format == Format::Json {
            println!("{}", serde_json::to_string(&json)?);
        } else {
            print!(
                "{}",
                table(
                    &["CONTAINER", "CPU %", "GUEST MEM USED / TOTAL", "PIDS", "VM HOST RSS", "MONITOR RSS"],
                    &rows
                )
            );
        }
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn cp(cli: &Cli, args: &CpArgs) -> anyhow::Result<ExitCode> {
    let split = |s: &str| -> Option<(String, String)> {
        let (name, path) = s.split_once(':')?;
        (!name.is_empty() && !name.contains('/')).then(|| (name.to_owned(), path.to_owned()))
    };
    match (split(&args.source), split(&args.destination)) {
        (None, Some((name, path))) => ops::copy_in(&cli.paths(), &name, &PathBuf::from(&args.source), &path)?,
        (Some((name, path)), None) => {
            ops::copy_out(&cli.paths(), &name, &path, &PathBuf::from(&args.destination))?
        }
        _ => anyhow::bail!("cp needs exactly one CONTAINER:PATH argument and one host path"),
    }
    Ok(ExitCode::SUCCESS)
}

fn template(cli: &Cli, command: &TemplateCommand) -> anyhow::Result<ExitCode> {
    use bulkhead_runtime::template;
    let paths = cli.paths();
    match command {
        TemplateCommand::Warm { memory, cpus, kernel, network } => {
            let t = ops::warm_template(
                &paths,
                spec::parse_memory(memory)?,
                spec::parse_cpus(cpus)?,
                kernel.as_deref(),
                network,
            )?;
            println!("{}", t.key);
        }
        TemplateCommand::Ls { format } => {
            let templates = template::list(&paths)?;
            if *format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&templates)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = templates
                .iter()
                .map(|t| {
                    vec![
                        t.key.clone(),
                        format!("{}MiB", t.meta.memory_mib),
                        t.meta.vcpus.to_string(),
                        t.meta.accel.clone(),
                        t.meta.net.clone(),
                        t.meta.kernel_digest.get(7..19).unwrap_or("").to_owned(),
                        t.images.len().to_string(),
                        super::output::human_size(t.bytes),
                        t.created.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["KEY", "MEMORY", "VCPUS", "ACCEL", "NET", "KERNEL", "IMAGES", "SIZE", "CREATED"],
                    &rows
                )
            );
        }
        TemplateCommand::Rm { keys } => {
            for key in keys {
                for removed in template::remove(&paths, key)? {
                    println!("{removed}");
                }
            }
        }
        TemplateCommand::Prune => {
            for removed in template::remove(&paths, "")? {
                println!("{removed}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
