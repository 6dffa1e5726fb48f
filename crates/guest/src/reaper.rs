//! Reaping: as PID 1, every orphan in the VM becomes our child and must be waited for.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::Error;

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
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
