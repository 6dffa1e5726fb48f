//! Threads for the agent's jobs (stream pumps, process supervisors, copies), started at boot.
//!
//! Starting a thread is one of the slowest things a VM restored from a template does: none of the
//! code involved has been run (and, under emulation, translated) in that VM yet, and a container
//! start needs three or four. So the init starts [`PREPARED`] idle workers before the template is
//! saved, a job goes to an idle worker when there is one, and a new thread (which joins the idle
//! workers when its job ends) when there is none.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

/// Idle workers, each waiting on its own channel.
static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

/// Workers started at boot: enough for a container's main process and an exec.
const PREPARED: usize = 8;

/// Ends when its job has run.
pub struct Done(Receiver<()>);

impl Done {
    /// Waits for the job to end (a panicking job ends it too).
    pub fn join(self) {
        let _ = self.0.recv();
    }
}

/// Starts the idle workers.
pub fn prepare() -> std::io::Result<()> {
    for _ in 0..PREPARED {
        start_thread(None)?;
    }
    Ok(())
}

/// Runs `job` on a worker; a failure to start one is logged (as the job's `what`) and the job is
/// dropped, which ends its `Done` at once.
pub fn run(what: &str, job: impl FnOnce() + Send + 'static) -> Done {
    let (done_tx, done) = mpsc::channel();
    let mut job: Job = Box::new(move || {
        job();
        let _ = done_tx.send(());
    });
    loop {
        let Some(worker) = idle().pop() else { break };
        match worker.send(job) {
            Ok(()) => return Done(done),
            // That worker is gone; try the next.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    if let Err(e) = start_thread(Some(job)) {
        eprintln!("bulkhead-guest: starting a {what} thread: {e}");
    }
    Done(done)
}

fn start_thread(first: Option<Job>) -> std::io::Result<()> {
    std::thread::Builder::new().name("worker".into()).spawn(move || {
        if let Some(job) = first {
            job();
        }
        loop {
            let (tx, rx) = mpsc::channel::<Job>();
            idle().push(tx);
            match rx.recv() {
                Ok(job) => job(),
                Err(_) => return,
            }
        }
    })?;
    Ok(())
}

fn idle() -> MutexGuard<'static, Vec<Sender<Job>>> {
    IDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn jobs_run_on_idle_workers_and_new_ones_when_none_is_idle() {
        prepare().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = mpsc::channel::<()>();
        let release = Arc::new(Mutex::new(release));
        // More blocking jobs than prepared workers: the extra ones need new threads.
        let done: Vec<Done> = (0..PREPARED + 4)
            .map(|_| {
                let (count, release) = (Arc::clone(&count), Arc::clone(&release));
                run("test", move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = release.lock().unwrap().recv();
                })
            })
            .collect();
        while count.load(Ordering::SeqCst) < PREPARED + 4 {
            std::thread::yield_now();
        }
        for _ in 0..PREPARED + 4 {
            release_tx.send(()).unwrap();
        }
        for d in done {
            d.join();
        }
        // A job that panics still ends its Done.
        run("test", || panic!("job panics")).join();
    }
}
