//! A minimal QMP client: the greeting, capability negotiation, and synchronous commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::Error;

/// QEMU's replies are small; a longer line is not QEMU talking.
const MAX_LINE: usize = 1 << 20;

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Reads the greeting and enters command mode.
    pub(crate) fn handshake(stream: UnixStream, timeout: Duration) -> Result<Qmp, Error> {
        stream.set_read_timeout(Some(timeout)).map_err(|e| Error::Qmp(format!("setting a timeout: {e}")))?;
        let writer = stream.try_clone().map_err(|e| Error::Qmp(format!("cloning the socket: {e}")))?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read_value()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value; events that arrive meanwhile are skipped.
    pub(crate) fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(|e| Error::Qmp(format!("sending {command}: {e}")))?;
        loop {
            let reply = self.read_value()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("no description");
                return Err(Error::Qmp(format!("{command} failed: {desc}")));
            }
            // An asynchronous event ({"event": …}); not an answer.
        }
    }

    fn read_value(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(|e| Error::Qmp(format!("reading a reply: {e}")))?;
        if read == 0 {
            return Err(Error::Qmp("QEMU closed the QMP connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Qmp(format!("reply is not JSON ({e}): {line:.200}")))
    }
}
