//! The control API: JSON lines over a unix socket. Requests `{"cmd":"pause"}`,
//! `{"cmd":"resume"}`, `{"cmd":"snapshot","dir":"/path"}`, `{"cmd":"status"}`,
//! `{"cmd":"attach-disk","slot":0,"path":"/img","read_only":false}`,
//! `{"cmd":"detach-disk","slot":0}`; each answered by one line `{"ok":true,"state":"paused"}`
//! or `{"ok":false,"error":"..."}`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

/// Errors of the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be created.
    #[error("cannot listen on API socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Pause all vCPUs.
    Pause,
    /// Resume all vCPUs.
    Resume,
    /// Write a snapshot into `dir` (VM must be paused).
    Snapshot {
        /// Target directory.
        dir: String,
    },
    /// Report running / paused.
    Status,
    /// Put an image file or block device into disk slot `slot` (the guest sees its size).
    #[serde(rename = "attach-disk")]
    AttachDisk {
        /// The slot, counted from 0 in the order of `--disk-slot`.
        slot: usize,
        /// The image file or block device.
        path: String,
        /// The guest may only read it.
        #[serde(default)]
        read_only: bool,
    },
    /// Empty disk slot `slot` (the guest sees size 0).
    #[serde(rename = "detach-disk")]
    DetachDisk {
        /// The slot.
        slot: usize,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// VM state after the request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Response {
    /// Success with the VM's state.
    pub fn ok(state: &str) -> Response {
        Response {
            ok: true,
            state: Some(state.to_string()),
            error: None,
        }
    }

    /// Failure.
    pub fn error(msg: String) -> Response {
        Response {
            ok: false,
            state: None,
            error: Some(msg),
        }
    }
}

/// What reading a client gave.
pub enum ClientRead {
    /// Complete requests (a bad line yields no request but an error answer is sent).
    Requests(Vec<Request>),
    /// No complete line yet.
    Pending,
    /// The client went away.
    Closed,
}

const MAX_LINE: usize = 4096;

/// The listening socket and its clients.
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    clients: HashMap<RawFd, (UnixStream, Vec<u8>)>,
}

impl ApiServer {
    /// Listens on `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> Result<ApiServer, ApiError> {
        let err = |source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            clients: HashMap::new(),
        })
    }

    /// The listening fd.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts one client; returns its fd.
    pub fn accept(&mut self) -> Option<RawFd> {
        let (s, _) = self.listener.accept().ok()?;
        s.set_nonblocking(true).ok()?;
        let fd = s.as_raw_fd();
        self.clients.insert(fd, (s, Vec::new()));
        Some(fd)
    }

    /// Reads what client `fd` sent.
    pub fn read_request(&mut self, fd: RawFd) -> ClientRead {
        let Some((stream, buf)) = self.clients.get_mut(&fd) else {
            return ClientRead::Closed;
        };
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return ClientRead::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return ClientRead::Closed,
            }
        }
        let mut reqs = Vec::new();
        let mut errors = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            match serde_json::from_slice::<Request>(&line) {
                Ok(r) => reqs.push(r),
                Err(e) => errors.push(Response::error(format!("bad request: {e}"))),
            }
        }
        if buf.len() > MAX_LINE {
            return ClientRead::Closed;
        }
        for e in errors {
            self.respond(fd, &e);
        }
        if reqs.is_empty() {
            ClientRead::Pending
        } else {
            ClientRead::Requests(reqs)
        }
    }

    /// Sends one response line to client `fd`.
    pub fn respond(&mut self, fd: RawFd, resp: &Response) {
        if let Some((stream, _)) = self.clients.get_mut(&fd) {
            let mut line = serde_json::to_vec(resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            line.push(b'\n');
            // Responses are small; a blocking write for the duration is fine.
            let _ = stream.set_nonblocking(false);
            if let Err(e) = stream.write_all(&line) {
                debug!(error = %e, "API client gone");
            }
            let _ = stream.set_nonblocking(true);
        }
    }

    /// Forgets client `fd`.
    pub fn close(&mut self, fd: RawFd) {
        self.clients.remove(&fd);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_responses_encode() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"pause"}"#).unwrap(),
            Request::Pause
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"snapshot","dir":"/x"}"#).unwrap(),
            Request::Snapshot { dir: "/x".into() }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"attach-disk","slot":2,"path":"/i.img"}"#)
                .unwrap(),
            Request::AttachDisk {
                slot: 2,
                path: "/i.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"detach-disk","slot":0}"#).unwrap(),
            Request::DetachDisk { slot: 0 }
        );
        assert_eq!(
            serde_json::to_string(&Response::ok("paused")).unwrap(),
            r#"{"ok":true,"state":"paused"}"#
        );
    }

    #[test]
    fn server_reads_lines_and_answers() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-api").unwrap();
        let path = dir.as_path().join("api.sock");
        let mut server = ApiServer::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let fd = loop {
            if let Some(fd) = server.accept() {
                break fd;
            }
        };
        client
            .write_all(b"{\"cmd\":\"status\"}\nnot json\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        match server.read_request(fd) {
            ClientRead::Requests(r) => assert_eq!(r, vec![Request::Status]),
            _ => panic!("expected a request"),
        }
        server.respond(fd, &Response::ok("running"));
        let mut s = String::new();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 256];
        while s.matches('\n').count() < 2 {
            let n = client.read(&mut b).unwrap();
            s.push_str(std::str::from_utf8(&b[..n]).unwrap());
        }
        assert!(s.contains("bad request"));
        assert!(s.contains(r#"{"ok":true,"state":"running"}"#));
    }
}
