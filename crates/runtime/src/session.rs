//! The host end of an agent session, shared by any number of threads.
//!
//! One reader thread owns the receive side and dispatches: replies go to the requests waiting for
//! them (in order, see the protocol crate), stream data to the stream's receiver, credits to the
//! writers waiting for them, and `Exited`/`CopyDone` to the event channel. Everything the guest
//! sends is checked before it costs the host anything: a stream that overruns its window or a
//! reply nobody asked for ends the session.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bulkhead_proto::{encode, ExitStatus, Frame, FrameReader, Message, INITIAL_CREDIT};

use crate::Error;

/// Largest data frame this side sends; well under the frame limit.
const CHUNK: usize = 64 * 1024;

/// Something the guest reported on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Exited {
        id: u32,
        status: ExitStatus,
    },
    CopyDone {
        stream: u32,
        error: Option<String>,
    },
    /// The channel ended; the text says why (the guest went away, or broke the protocol).
    Closed(String),
}

pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held while a request is queued *and* written, so replies match requests by order.
    writer: Mutex<UnixStream>,
    state: Mutex<State>,
    credit_changed: Condvar,
}

#[derive(Default)]
struct State {
    waiters: VecDeque<Sender<Message>>,
    /// Guest → host streams: where their bytes go, and how many the host has not yet granted back.
    outputs: HashMap<u32, (Sender<Vec<u8>>, u32)>,
    /// Host → guest streams: bytes the guest has allowed us to send.
    credits: HashMap<u32, u32>,
    closed: Option<String>,
}

impl Session {
    /// Starts the reader thread on `reader`; `writer` is the same channel's send side.
    pub fn start(
        reader: FrameReader<UnixStream>,
        writer: UnixStream,
    ) -> Result<(Session, Receiver<Event>), Error> {
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            state: Mutex::new(State::default()),
            credit_changed: Condvar::new(),
        });
        let (events_tx, events) = mpsc::channel();
        let for_reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(reader, &for_reader, &events_tx))
            .map_err(|e| Error::Agent(format!("starting the reader thread: {e}")))?;
        Ok((Session { shared }, events))
    }

    /// Sends a request and waits up to `timeout` for its reply. `Error` replies become errors.
    pub fn request(&self, message: Message, timeout: Duration) -> Result<Message, Error> {
        let kind = message.kind();
        let (tx, rx) = mpsc::channel();
        {
            let mut writer = lock(&self.shared.writer);
            let mut state = lock(&self.shared.state);
            if let Some(why) = &state.closed {
                return Err(Error::Agent(format!("{kind}: {why}")));
            }
            state.waiters.push_back(tx);
            drop(state);
            write_frame(&mut writer, &Frame::Message(message))?;
        }
        match rx.recv_timeout(timeout) {
            Ok(Message::Error { message }) => {
                Err(Error::Agent(format!("{kind} failed in the guest: {}", clip(&message))))
            }
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                Err(Error::AgentTimeout { stage: kind, seconds: timeout.as_secs(), detail: String::new() })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Agent(format!(
                "{kind}: {}",
                lock(&self.shared.state).closed.clone().unwrap_or_else(|| "the channel closed".into())
            ))),
        }
    }

    /// Sends a message that has no reply (`Signal`, `Resize`).
    pub fn notify(&self, message: Message) -> Result<(), Error> {
        write_frame(&mut lock(&self.shared.writer), &Frame::Message(message))
    }

    /// Registers the receiver of guest → host stream `stream`; do it before the request that
    /// opens the stream. Chunks arrive in order; an empty chunk is the end. Call [`Session::grant`]
    /// as chunks are consumed, or the guest stops sending.
    pub fn open_output(&self, stream: u32) -> Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.state).outputs.insert(stream, (tx, 0));
        rx
    }

    /// Returns `bytes` of window on output `stream` to the guest.
    pub fn grant(&self, stream: u32, bytes: u32) -> Result<(), Error> {
        {
            let mut state = lock(&self.shared.state);
            if let Some((_, outstanding)) = state.outputs.get_mut(&stream) {
                *outstanding = outstanding.saturating_sub(bytes);
            }
        }
        self.notify(Message::Credit { stream, bytes })
    }

    /// Allows `INITIAL_CREDIT` bytes on host → guest stream `stream`; call when the guest has
    /// opened it (its `Started` or `CopyStarted`).
    pub fn open_input(&self, stream: u32) {
        lock(&self.shared.state).credits.insert(stream, INITIAL_CREDIT);
    }

    /// Sends `bytes` on input `stream`, waiting for credit as needed.
    pub fn send_data(&self, stream: u32, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let allowed = {
                let mut state = lock(&self.shared.state);
                loop {
                    if let Some(why) = &state.closed {
                        return Err(Error::Agent(format!("stream {stream}: {why}")));
                    }
                    match state.credits.get_mut(&stream) {
                        None => return Err(Error::Agent(format!("stream {stream} is not open for input"))),
                        Some(0) => {}
                        Some(credit) => {
                            let n =
                                bytes.len().min(CHUNK).min(usize::try_from(*credit).unwrap_or(usize::MAX));
                            *credit -= u32::try_from(n).expect("n <= credit");
                            break n;
                        }
                    }
                    state = self.shared.credit_changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            let frame = Frame::Data { stream, bytes: bytes[..allowed].to_vec() };
            write_frame(&mut lock(&self.shared.writer), &frame)?;
            bytes = &bytes[allowed..];
        }
        Ok(())
    }

    /// Ends input `stream` (the process sees end of file).
    pub fn close_input(&self, stream: u32) -> Result<(), Error> {
        lock(&self.shared.state).credits.remove(&stream);
        write_frame(&mut lock(&self.shared.writer), &Frame::Data { stream, bytes: Vec::new() })
    }

    /// Why the session ended, if it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.shared.state).closed.clone()
    }
}

fn read_loop(mut reader: FrameReader<UnixStream>, shared: &Shared, events: &Sender<Event>) {
    let why = loop {
        let frame = match reader.read_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the guest closed the agent channel".to_owned(),
            Err(e) => break e.to_string(),
        };
        if let Err(why) = dispatch(frame, shared, events) {
            break why;
        }
    };
    tracing::debug!(%why, "agent session ended");
    {
        let mut state = lock(&shared.state);
        state.closed = Some(why.clone());
        // Dropping the senders wakes every waiter and every output reader.
        state.waiters.clear();
        state.outputs.clear();
    }
    shared.credit_changed.notify_all();
    let _ = events.send(Event::Closed(why));
}

fn dispatch(frame: Frame, shared: &Shared, events: &Sender<Event>) -> Result<(), String> {
    let message = match frame {
        Frame::Data { stream, bytes } => {
            let mut state = lock(&shared.state);
            let Some((sink, outstanding)) = state.outputs.get_mut(&stream) else {
                return Err(format!("the guest sent data on stream {stream}, which is not open"));
            };
            if bytes.is_empty() {
                let _ = sink.send(bytes);
                state.outputs.remove(&stream);
                return Ok(());
            }
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            *outstanding = outstanding.saturating_add(len);
            if *outstanding > INITIAL_CREDIT {
                return Err(format!(
                    "the guest overran its window on stream {stream} ({outstanding} bytes unacknowledged)"
                ));
            }
            // A receiver that went away just stops listening; the bytes are dropped and granted.
            if sink.send(bytes).is_err() {
                *outstanding -= len;
                drop(state);
                let _ = write_frame(
                    &mut lock(&shared.writer),
                    &Frame::Message(Message::Credit { stream, bytes: len }),
                );
            }
            return Ok(());
        }
        Frame::Message(message) => message,
    };
    match message {
        Message::Credit { stream, bytes } => {
            let mut state = lock(&shared.state);
            if let Some(credit) = state.credits.get_mut(&stream) {
                *credit = credit.saturating_add(bytes).min(INITIAL_CREDIT.saturating_mul(4));
            }
            shared.credit_changed.notify_all();
        }
        Message::Exited { id, status } => {
            let _ = events.send(Event::Exited { id, status });
        }
        Message::CopyDone { stream, error } => {
            let _ = events.send(Event::CopyDone { stream, error: error.map(|e| clip(&e)) });
        }
        reply @ (Message::Ready { .. }
        | Message::Pong { .. }
        | Message::ShuttingDown
        | Message::Error { .. }
        | Message::SetupDone
        | Message::Started { .. }
        | Message::StartFailed { .. }
        | Message::StatsReply { .. }
        | Message::TopReply { .. }
        | Message::CopyStarted { .. }) => {
            let kind = reply.kind();
            let waiter = lock(&shared.state).waiters.pop_front();
            match waiter {
                // A waiter that gave up (timed out) no longer listens; its reply is dropped.
                Some(waiter) => drop(waiter.send(reply)),
                None => return Err(format!("the guest sent a {kind} reply to no request")),
            }
        }
        other => return Err(format!("the guest sent {}, which only the host sends", other.kind())),
    }
    Ok(())
}

fn write_frame(writer: &mut UnixStream, frame: &Frame) -> Result<(), Error> {
    let mut buf = Vec::new();
    encode(frame, &mut buf).map_err(|e| Error::Agent(e.to_string()))?;
    writer.write_all(&buf).map_err(|e| Error::Agent(format!("sending to the guest: {e}")))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken invariant worth refusing service for.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Guest-supplied text, bounded and stripped of control characters before it reaches a terminal.
pub(crate) fn clip(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A session whose guest end is a plain socket the test writes hostile bytes to.
    fn session() -> (Session, Receiver<Event>, UnixStream) {
        let (host, guest) = UnixStream::pair().unwrap();
        let reader = FrameReader::new(host.try_clone().unwrap());
        let (session, events) = Session::start(reader, host).unwrap();
        (session, events, guest)
    }

    fn send(guest: &mut UnixStream, frame: &Frame) {
        let mut buf = Vec::new();
        encode(frame, &mut buf).unwrap();
        guest.write_all(&buf).unwrap();
    }

    fn closed_because(events: &Receiver<Event>) -> String {
        loop {
            match events.recv_timeout(Duration::from_secs(5)).expect("the session did not end") {
                Event::Closed(why) => return why,
                _ => continue,
            }
        }
    }

    #[test]
    fn a_guest_that_overruns_its_window_is_cut_off() {
        let (session, events, mut guest) = session();
        let _rx = session.open_output(5);
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..(INITIAL_CREDIT as usize / chunk.len() + 1) {
            send(&mut guest, &Frame::Data { stream: 5, bytes: chunk.clone() });
        }
        assert!(closed_because(&events).contains("overran its window on stream 5"));
        assert!(session.closed().is_some());
    }

    #[test]
    fn data_on_a_stream_nobody_opened_ends_the_session() {
        let (_session, events, mut guest) = session();
        send(&mut guest, &Frame::Data { stream: 99, bytes: b"x".to_vec() });
        assert!(closed_because(&events).contains("stream 99, which is not open"));
    }

    #[test]
    fn a_reply_to_no_request_and_host_only_messages_end_the_session() {
        let (_session, events, mut guest) = session();
        send(&mut guest, &Frame::Message(Message::Pong { seq: 1 }));
        assert!(closed_because(&events).contains("pong reply to no request"));
        let (_session, events, mut guest) = session();
        send(&mut guest, &Frame::Message(Message::Shutdown));
        assert!(closed_because(&events).contains("which only the host sends"));
    }

    #[test]
    fn garbage_ends_the_session_and_fails_pending_requests_clearly() {
        let (session, events, mut guest) = session();
        let waiter = std::thread::spawn(move || session.request(Message::Stats, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        guest.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).unwrap();
        assert!(closed_because(&events).contains("exceeds the limit"));
        let err = waiter.join().unwrap().unwrap_err().to_string();
        assert!(err.starts_with("guest agent: stats:"), "{err}");
    }

    #[test]
    fn replies_are_matched_in_order_and_credit_is_bounded() {
        let (session, _events, mut guest) = session();
        let session = std::sync::Arc::new(session);
        let asker = {
            let session = std::sync::Arc::clone(&session);
            std::thread::spawn(move || session.request(Message::Ping { seq: 7 }, Duration::from_secs(10)))
        };
        let mut reader = FrameReader::new(guest.try_clone().unwrap());
        assert_eq!(reader.read_frame().unwrap(), Some(Frame::Message(Message::Ping { seq: 7 })));
        send(&mut guest, &Frame::Message(Message::Pong { seq: 7 }));
        assert_eq!(asker.join().unwrap().unwrap(), Message::Pong { seq: 7 });

        // A guest granting absurd credit cannot make the host buffer without bound.
        session.open_input(3);
        send(&mut guest, &Frame::Message(Message::Credit { stream: 3, bytes: u32::MAX }));
        std::thread::sleep(Duration::from_millis(50));
        let credit = *lock(&session.shared.state).credits.get(&3).unwrap();
        assert_eq!(credit, INITIAL_CREDIT * 4);
    }
}
