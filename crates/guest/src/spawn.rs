//! Forking container processes.
//!
//! All of them are forked by one dedicated thread, the spawner, which called
//! `unshare(CLONE_NEWPID)` when it started: namespaces are per thread, and that call changes only
//! the pid namespace of the thread's future children. So the first process it forks (the main
//! process) is PID 1 of the container's pid namespace and every later one (an exec) lands in
//! the same namespace, still a child of the init so the reaper gets its status. A thread in that
//! state may not start threads, which the spawner never does.
//!
//! The child is cloned as `vfork` would make it (sharing the init's memory, the spawner suspended
//! until the child execs), and until `exec` it may only make async-signal-safe calls, so
//! [`Plan`] holds every string and descriptor the child needs, prepared before the clone, and the
//! child makes only raw system calls. It reports a failed step through a close-on-exec pipe; end
//! of file on that pipe means `execve` succeeded.

use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};

use bulkhead_proto::ExitStatus;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};

use crate::reaper;

/// How the process gets its namespaces.
pub enum Namespaces {
    /// The main process: new mount, UTS and IPC namespaces, `/proc` mounted, root pivoted.
    Create {
        /// The container root as the init sees it.
        rootfs: CString,
        /// `<rootfs>/proc`.
        proc_dir: CString,
        hostname: CString,
    },
    /// An exec: the main process's mount, UTS and IPC namespaces.
    Join { mnt: OwnedFd, uts: OwnedFd, ipc: OwnedFd },
}

/// Everything the child needs, prepared before the fork.
pub struct Plan {
    pub namespaces: Namespaces,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdin is a terminal that becomes the controlling terminal.
    pub tty: bool,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// The working directory and its parents, created (as root, errors ignored) before `chdir`.
    pub mkdirs: Vec<CString>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub cwd: CString,
    /// Absolute path inside the container.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// The steps of the child, as reported when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Signals = 1,
    Unshare,
    MountPrivate,
    MountProc,
    EnterRoot,
    PivotRoot,
    DetachOldRoot,
    Hostname,
    JoinMnt,
    JoinUts,
    JoinIpc,
    Setsid,
    Stdio,
    ControllingTerminal,
    Rlimit,
    Setgroups,
    Setgid,
    Setuid,
    Chdir,
    Exec,
}

impl Step {
    const ALL: [Step; 20] = [
        Step::Signals,
        Step::Unshare,
        Step::MountPrivate,
        Step::MountProc,
        Step::EnterRoot,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Hostname,
        Step::JoinMnt,
        Step::JoinUts,
        Step::JoinIpc,
        Step::Setsid,
        Step::Stdio,
        Step::ControllingTerminal,
        Step::Rlimit,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::Chdir,
        Step::Exec,
    ];

    fn from_byte(byte: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == byte)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Signals => "resetting signal handling",
            Step::Unshare => "creating namespaces",
            Step::MountPrivate => "making mounts private",
            Step::MountProc => "mounting /proc",
            Step::EnterRoot => "entering the root filesystem",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detaching the old root",
            Step::Hostname => "setting the hostname",
            Step::JoinMnt => "joining the container's mount namespace",
            Step::JoinUts => "joining the container's UTS namespace",
            Step::JoinIpc => "joining the container's IPC namespace",
            Step::Setsid => "setsid",
            Step::Stdio => "setting up stdio",
            Step::ControllingTerminal => "setting the controlling terminal",
            Step::Rlimit => "setting resource limits",
            Step::Setgroups => "setting supplementary groups",
            Step::Setgid => "setting the group id",
            Step::Setuid => "setting the user id",
            Step::Chdir => "changing to the working directory",
            Step::Exec => "exec",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: {1}")]
    Parent(&'static str, Errno),
    /// The child failed at `step` with `errno`; it has been reaped.
    #[error("{}: {errno}", step.describe())]
    Child { step: Step, errno: Errno },
    #[error("the process spawner thread is gone")]
    Gone,
}

/// A process that is running (its `execve` succeeded).
pub struct Spawned {
    pub pid: i32,
    /// Delivers the exit status once the reaper has it.
    pub exit: Receiver<ExitStatus>,
}

type Job = (Plan, Sender<Result<Spawned, SpawnError>>);

/// The spawner thread's mailbox.
pub struct Spawner {
    jobs: Sender<Job>,
}

impl Spawner {
    /// Starts the spawner thread in a new pid namespace.
    pub fn start() -> Result<Spawner, SpawnError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                let unshared = unshare(CloneFlags::CLONE_NEWPID);
                let ok = unshared.is_ok();
                let _ = ready_tx.send(unshared);
                if ok {
                    for (plan, reply) in inbox {
                        let _ = reply.send(spawn(plan));
                    }
                }
            })
            .map_err(|e| {
                SpawnError::Parent(
                    "starting the spawner thread",
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                )
            })?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Spawner { jobs }),
            Ok(Err(errno)) => Err(SpawnError::Parent("creating the pid namespace", errno)),
            Err(_) => Err(SpawnError::Gone),
        }
    }

    /// Forks and execs `plan` on the spawner thread; returns once `execve` succeeded or failed.
    pub fn spawn(&self, plan: Plan) -> Result<Spawned, SpawnError> {
        let (reply, result) = mpsc::channel();
        self.jobs.send((plan, reply)).map_err(|_| SpawnError::Gone)?;
        result.recv().map_err(|_| SpawnError::Gone)?
    }
}

/// Pointers into a [`Plan`], built before the fork so the child allocates nothing.
struct Prepared<'a> {
    plan: &'a Plan,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    empty_mask: libc::sigset_t,
    default_action: libc::sigaction,
    report: RawFd,
}

fn spawn(plan: Plan) -> Result<Spawned, SpawnError> {
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Parent("creating a pipe", e))?;
    let null_terminated = |strings: &[CString]| {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>()
    };
    // SAFETY: both are plain C structs for which all-zero bytes are valid; an all-zero
    // `sigaction` is SIG_DFL with no flags and an empty mask, and `sigemptyset` initialises the set.
    let (mut empty_mask, default_action) =
        unsafe { (std::mem::zeroed::<libc::sigset_t>(), std::mem::zeroed::<libc::sigaction>()) };
    // SAFETY: `empty_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };
    let prepared = Prepared {
        plan: &plan,
        argv: null_terminated(&plan.argv),
        envp: null_terminated(&plan.envp),
        empty_mask,
        default_action,
        report: report_write.as_raw_fd(),
    };
    let (tx, exit) = mpsc::channel();
    // The child's stack. The child shares this process's memory until it execs (see below), so
    // it must not run on ours; untouched pages of it cost nothing.
    let mut stack = vec![0u8; CHILD_STACK];

    // No handler of ours may run in the child, which shares our memory: every signal stays
    // blocked until the child has reset all dispositions.
    // SAFETY: both are plain C structs for which all-zero bytes are valid, filled in by
    // sigfillset and pthread_sigmask before use.
    let (mut all, mut saved) =
        unsafe { (std::mem::zeroed::<libc::sigset_t>(), std::mem::zeroed::<libc::sigset_t>()) };
    // SAFETY: valid, writable sigset_t values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    let mut waiters = reaper::lock_waiters();
    // The child is started as vfork(2) starts one: in our address space, with this thread
    // suspended until it has exec'd or exited. Copying the init's page tables, as fork(2) would,
    // is the slowest part of a start under emulation, and the child throws them away at once.
    // SAFETY: `stack` is a live allocation of CHILD_STACK bytes and its end (aligned down to
    // 16) is the child's initial stack pointer; the child runs only `child_entry`, which makes
    // raw system calls on `prepared` (alive: this thread waits for the child before going on)
    // and ends in `execve` or `_exit` without returning, allocating or taking a lock. SIGCHLD as
    // the exit signal lets the reaper collect it like any other child.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_entry,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(&prepared).cast_mut().cast(),
        )
    };
    let clone_error = Errno::last();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(SpawnError::Parent("clone", clone_error));
    }
    waiters.insert(pid, tx);
    drop(waiters);
    drop(prepared);
    // The child has its own descriptor table; the write end must close here for EOF to mean exec.
    drop(report_write);
    drop(plan);

    let mut report = [0u8; 5];
    let mut got = 0;
    let mut file = File::from(report_read);
    while got < report.len() {
        match file.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(Spawned { pid, exit });
    }
    // The child failed before exec and exits now: reap it so it leaves no trace.
    let _ = exit.recv();
    let step = Step::from_byte(report[0]).unwrap_or(Step::Exec);
    let errno = Errno::from_raw(i32::from_le_bytes([report[1], report[2], report[3], report[4]]));
    Err(SpawnError::Child { step, errno })
}

/// Writes the failed step and errno to the report pipe and exits.
fn fail(report: RawFd, step: Step) -> ! {
    let errno = Errno::last_raw();
    let mut message = [0u8; 5];
    message[0] = step as u8;
    message[1..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes 5 bytes from a live stack buffer to a descriptor we own, then exits without
    // running any Rust or libc teardown; both are async-signal-safe.
    unsafe {
        libc::write(report, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// Fails the child at `step` when a system call returned a negative value.
fn check<T: Into<i64>>(report: RawFd, step: Step, ret: T) {
    if ret.into() < 0 {
        fail(report, step);
    }
}

/// Stack of a child until it execs.
const CHILD_STACK: usize = 256 * 1024;

/// Where the child starts: `arg` is the parent's [`Prepared`].
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes a pointer to its `Prepared`, which outlives the child's use of it
    // (the parent is suspended until the child execs or exits).
    unsafe { child(&*arg.cast::<Prepared>()) }
}

/// The child's side of the clone: set up the process and exec it.
///
/// # Safety
/// Must run only in a child made by `spawn`'s clone (sharing the parent's memory, the parent
/// suspended, every signal blocked); it does only async-signal-safe system calls on the prepared
/// data, writes no memory but its own stack, and never returns.
unsafe fn child(p: &Prepared) -> ! {
    let plan = p.plan;
    let r = p.report;

    // Rust ignores SIGPIPE and the init blocks SIGCHLD in every thread (and `spawn` blocked
    // everything); a new program must start with none of that. Ignored dispositions survive
    // exec, so reset them all first (errors for the signals that cannot be changed are
    // expected), then unblock.
    // SAFETY: valid pointers to initialised, live values; sigaction and sigprocmask are
    // async-signal-safe.
    unsafe {
        for signal in 1..65 {
            libc::sigaction(signal, &p.default_action, std::ptr::null_mut());
        }
        check(r, Step::Signals, libc::sigprocmask(libc::SIG_SETMASK, &p.empty_mask, std::ptr::null_mut()));
    }

    match &plan.namespaces {
        Namespaces::Create { rootfs, proc_dir, hostname } => {
            // SAFETY: every pointer is a NUL-terminated string from the plan or a literal; these
            // are plain system calls in a single-threaded child.
            unsafe {
                let flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
                check(r, Step::Unshare, libc::unshare(flags));
                let root = c"/".as_ptr();
                let private = libc::MS_REC | libc::MS_PRIVATE;
                check(
                    r,
                    Step::MountPrivate,
                    libc::mount(std::ptr::null(), root, std::ptr::null(), private, std::ptr::null()),
                );
                let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let proc = c"proc".as_ptr();
                check(
                    r,
                    Step::MountProc,
                    libc::mount(proc, proc_dir.as_ptr(), proc, proc_flags, std::ptr::null()),
                );
                check(r, Step::EnterRoot, libc::chdir(rootfs.as_ptr()));
                let dot = c".".as_ptr();
                check(r, Step::PivotRoot, libc::syscall(libc::SYS_pivot_root, dot, dot));
                // The old root now sits on top of the new one; detach it.
                check(r, Step::DetachOldRoot, libc::umount2(dot, libc::MNT_DETACH));
                check(r, Step::EnterRoot, libc::chdir(root));
                let name = hostname.as_bytes();
                check(r, Step::Hostname, libc::sethostname(name.as_ptr().cast(), name.len()));
            }
        }
        Namespaces::Join { mnt, uts, ipc } => {
            // SAFETY: setns on descriptors the plan owns; the child is single-threaded, as
            // joining a mount namespace requires.
            unsafe {
                check(r, Step::JoinMnt, libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS));
                check(r, Step::JoinUts, libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS));
                check(r, Step::JoinIpc, libc::setns(ipc.as_raw_fd(), libc::CLONE_NEWIPC));
            }
        }
    }

    // SAFETY: plain system calls on descriptors the plan owns and on values it holds; dup2
    // clears close-on-exec on the targets, and the sources stay close-on-exec.
    unsafe {
        check(r, Step::Setsid, libc::setsid());
        check(r, Step::Stdio, libc::dup2(plan.stdin.as_raw_fd(), 0));
        check(r, Step::Stdio, libc::dup2(plan.stdout.as_raw_fd(), 1));
        check(r, Step::Stdio, libc::dup2(plan.stderr.as_raw_fd(), 2));
        if plan.tty {
            check(r, Step::ControllingTerminal, libc::ioctl(0, libc::TIOCSCTTY, 0));
        }
        for (resource, limit) in &plan.rlimits {
            check(r, Step::Rlimit, libc::setrlimit(*resource, limit));
        }
        for dir in &plan.mkdirs {
            libc::mkdir(dir.as_ptr(), 0o755);
        }
        // Raw system calls: glibc's wrappers would try to change every thread of the process.
        check(
            r,
            Step::Setgroups,
            libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()),
        );
        check(r, Step::Setgid, libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid));
        check(r, Step::Setuid, libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid));
        check(r, Step::Chdir, libc::chdir(plan.cwd.as_ptr()));
        libc::execve(plan.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
    }
    fail(r, Step::Exec)
}
