//! Reaping: as PID 1, every orphan in the VM becomes our child and must be waited for. Children
//! the agent started hand their status to whoever registered for it.
//!
//! Registration cannot race the exit: the spawner holds [`lock_waiters`] across `fork` and
//! registers the new pid before releasing it, and the reaper takes the same lock before it looks
//! a reaped pid up, so a child that exits at once is still found.

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{LazyLock, Mutex, MutexGuard};

use bulkhead_proto::ExitStatus;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::Error;

/// Who waits for which pid.
pub type Waiters = HashMap<i32, Sender<ExitStatus>>;

static WAITERS: LazyLock<Mutex<Waiters>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The waiter table, locked; hold it across `fork` and insert the child before dropping it.
pub fn lock_waiters() -> MutexGuard<'static, Waiters> {
    // Nothing done under this lock can leave the map half-updated.
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks SIGCHLD in this thread (and so in every thread started after it) and starts a thread
/// that waits for it and reaps every exited child.
pub fn start() -> Result<(), Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(Error::Signals)?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            if set.wait().is_err() {
                continue;
            }
            reap_all();
        })
        .map(drop)
        .map_err(Error::Thread)
}

fn reap_all() {
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signal(signal as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(waiter) = lock_waiters().remove(&pid.as_raw()) {
            // A waiter that went away no longer cares.
            let _ = waiter.send(status);
        }
    }
}
