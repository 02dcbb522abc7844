//! A minimal QMP (QEMU Machine Protocol) client: one connection per command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{HypervisorError, Result};

/// Runs one QMP command on the socket at `path` and returns its `return` value.
pub fn execute(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value> {
    let err = |message: String| HypervisorError::Qmp {
        command: command.to_string(),
        message,
    };
    let stream = connect(path, timeout).map_err(|e| err(format!("connect {path:?}: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| err(e.to_string()))?;
    let mut writer = stream.try_clone().map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream);

    let greeting = read_message(&mut reader).map_err(err)?;
    if greeting.get("QMP").is_none() {
        return Err(err(format!("unexpected greeting {greeting}")));
    }
    send(&mut writer, "qmp_capabilities", None).map_err(err)?;
    read_return(&mut reader).map_err(err)?;
    send(&mut writer, command, arguments).map_err(err)?;
    read_return(&mut reader).map_err(err)
}

fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    // QEMU creates the socket right after it starts: retry briefly while it does not exist.
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(
    w: &mut impl Write,
    command: &str,
    arguments: Option<Value>,
) -> std::result::Result<(), String> {
    let mut msg = serde_json::json!({ "execute": command });
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    let mut line = msg.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
        .map_err(|e| format!("write: {e}"))
}

fn read_message(r: &mut impl BufRead) -> std::result::Result<Value, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed by QEMU".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("bad message {line:?}: {e}"))
}

/// Reads until the command's answer, skipping asynchronous events.
fn read_return(r: &mut impl BufRead) -> std::result::Result<Value, String> {
    loop {
        let msg = read_message(r)?;
        if let Some(ret) = msg.get("return") {
            return Ok(ret.clone());
        }
        if let Some(e) = msg.get("error") {
            return Err(e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string());
        }
        // {"event": ...}: not ours.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_events_and_reads_return() {
        let input =
            b"{\"event\": \"STOP\", \"timestamp\": {}}\n{\"return\": {\"status\": \"paused\"}}\n";
        let v = read_return(&mut &input[..]).unwrap();
        assert_eq!(v["status"], "paused");
    }

    #[test]
    fn error_desc_is_the_message() {
        let input = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\n";
        assert_eq!(read_return(&mut &input[..]).unwrap_err(), "no such thing");
    }

    #[test]
    fn closed_connection_is_an_error() {
        assert!(read_return(&mut &b""[..]).unwrap_err().contains("closed"));
    }
}
