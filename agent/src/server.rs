//! The ttrpc server of the agent, over any byte stream (unix socket, vsock, virtio-serial).
//!
//! ttrpc's own server only accepts on listening sockets; a virtio-serial port is a single
//! character device with no `accept`, so the agent runs its own connection loop over a pair of
//! file handles and dispatches into the generated service handlers. Every frame is bounded by
//! [`MAX_FRAME_LEN`]; malformed input gets an error reply or ends the connection, never the
//! agent.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hull_protocols::MAX_FRAME_LEN;
use ttrpc::proto::{
    Codec, MessageHeader, Request, Response, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_REQUEST,
};
use ttrpc::{Code, MethodHandler, TtrpcContext};

/// How long the body of a frame may take to arrive once its header is in.
const FRAME_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Requests handled at once on one connection; more are refused with RESOURCE_EXHAUSTED.
const MAX_IN_FLIGHT: usize = 256;

/// Why a frame could not be taken off the wire.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream between frames.
    #[error("end of stream")]
    Eof,
    /// The header announces a body larger than the agent accepts.
    #[error("stream {stream_id}: frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge {
        /// The stream the frame claimed.
        stream_id: u32,
        /// The announced length.
        len: u32,
    },
    /// The stream ended or stalled in the middle of a frame.
    #[error("truncated frame: {0}")]
    Truncated(io::Error),
    /// Reading failed.
    #[error("read: {0}")]
    Io(io::Error),
    /// A complete frame whose body is not a ttrpc request.
    #[error("stream {stream_id}: undecodable request: {reason}")]
    BadRequest {
        /// The stream the frame claimed.
        stream_id: u32,
        /// Why decoding failed.
        reason: String,
    },
    /// A frame of a type the agent does not serve (responses, data streams).
    #[error("stream {stream_id}: unexpected frame type {type_}")]
    UnexpectedType {
        /// The stream the frame claimed.
        stream_id: u32,
        /// The frame type.
        type_: u8,
    },
}

/// Parses a 10-byte ttrpc frame header and checks the announced length.
pub fn parse_header(buf: &[u8; MESSAGE_HEADER_LENGTH]) -> Result<MessageHeader, FrameError> {
    let mh = MessageHeader::from(&buf[..]);
    if mh.length as usize > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            stream_id: mh.stream_id,
            len: mh.length,
        });
    }
    Ok(mh)
}

/// Decodes a frame body as a ttrpc request.
pub fn decode_request(mh: &MessageHeader, body: &[u8]) -> Result<Request, FrameError> {
    if mh.type_ != MESSAGE_TYPE_REQUEST {
        return Err(FrameError::UnexpectedType {
            stream_id: mh.stream_id,
            type_: mh.type_,
        });
    }
    let req = <Request as Codec>::decode(body).map_err(|e| FrameError::BadRequest {
        stream_id: mh.stream_id,
        reason: format!("{e:?}"),
    })?;
    Ok(req)
}

/// Decodes one whole frame (header and body) from a buffer: the request decoding path the agent
/// runs on every input, exposed for fuzzing. Returns the request and the bytes consumed.
pub fn decode_frame(buf: &[u8]) -> Result<(MessageHeader, Request, usize), FrameError> {
    let head: &[u8; MESSAGE_HEADER_LENGTH] = buf
        .get(..MESSAGE_HEADER_LENGTH)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Eof)?;
    let mh = parse_header(head)?;
    let end = MESSAGE_HEADER_LENGTH + mh.length as usize;
    let body = buf.get(MESSAGE_HEADER_LENGTH..end).ok_or_else(|| {
        FrameError::Truncated(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"))
    })?;
    let req = decode_request(&mh, body)?;
    Ok((mh, req, end))
}

/// The method table: "/package.Service/Method" -> generated handler.
pub struct Services {
    methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>>,
}

impl Services {
    /// Builds the table from generated service maps.
    pub fn new(
        maps: impl IntoIterator<Item = HashMap<String, Box<dyn MethodHandler + Send + Sync>>>,
    ) -> Self {
        let mut methods = HashMap::new();
        for m in maps {
            methods.extend(m);
        }
        Services { methods }
    }

    /// Whether a method path is served.
    pub fn has(&self, path: &str) -> bool {
        self.methods.contains_key(path)
    }
}

fn status_response(code: Code, msg: impl Into<String>) -> Response {
    let mut res = Response::new();
    res.set_status(ttrpc::get_status(code, msg.into()));
    res
}

fn send_status(
    tx: &mpsc::Sender<(MessageHeader, Vec<u8>)>,
    stream_id: u32,
    code: Code,
    msg: impl Into<String>,
) {
    let res = status_response(code, msg);
    if let Ok(buf) = <Response as Codec>::encode(&res) {
        let mh = MessageHeader::new_response(stream_id, buf.len() as u32);
        // A closed channel means the writer is gone: the connection is ending anyway.
        let _ = tx.send((mh, buf));
    }
}

/// Waits until `fd` is readable or the deadline passes.
fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "frame body stalled",
            ));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(());
        }
    }
}

/// Reads exactly `buf.len()` bytes, giving up at `deadline` when one is set.
fn read_full(r: &mut File, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        if let Some(d) = deadline {
            wait_readable(r.as_raw_fd(), d)?;
        }
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame off the stream.
pub fn read_frame(r: &mut File) -> Result<(MessageHeader, Vec<u8>), FrameError> {
    let mut head = [0u8; MESSAGE_HEADER_LENGTH];
    match read_full(r, &mut head, None) {
        Ok(0) => return Err(FrameError::Eof),
        Ok(n) if n < MESSAGE_HEADER_LENGTH => {
            return Err(FrameError::Truncated(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("header of {n} bytes"),
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(FrameError::Io(e)),
    }
    let mh = parse_header(&head)?;
    let mut body = vec![0u8; mh.length as usize];
    let deadline = Instant::now() + FRAME_BODY_DEADLINE;
    match read_full(r, &mut body, Some(deadline)) {
        Ok(n) if n == body.len() => Ok((mh, body)),
        Ok(n) => Err(FrameError::Truncated(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body of {n}/{} bytes", mh.length),
        ))),
        Err(e) => Err(FrameError::Truncated(e)),
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The peer closed it.
    Closed,
    /// The byte stream can no longer be trusted (framing lost).
    ProtocolError(FrameError),
}

/// Serves ttrpc requests on one byte stream until it closes or framing is lost.
pub fn serve_connection(services: &Arc<Services>, mut reader: File, writer: File) -> ConnectionEnd {
    let (tx, rx) = mpsc::channel::<(MessageHeader, Vec<u8>)>();
    let fd = reader.as_raw_fd();
    // Shared with the writer thread so that the connection's end closes it at once: a
    // virtio-serial port opens only once, and the agent reopens it for the host's next
    // connection (a VM restored from a checkpoint) while long-polls of the old one still run.
    let writer = Arc::new(parking_lot::Mutex::new(Some(writer)));
    let w = Arc::clone(&writer);
    let writer_thread = std::thread::Builder::new()
        .name("ttrpc-writer".into())
        .spawn(move || write_loop(&w, rx));
    let in_flight = Arc::new(AtomicUsize::new(0));

    let end = loop {
        let (mh, body) = match read_frame(&mut reader) {
            Ok(f) => f,
            Err(FrameError::Eof) => break ConnectionEnd::Closed,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The body cannot be skipped safely: answer on the claimed stream and close.
                tracing::warn!(error = %e, "closing connection");
                if let FrameError::TooLarge { stream_id, .. } = e {
                    send_status(&tx, stream_id, Code::RESOURCE_EXHAUSTED, e.to_string());
                }
                break ConnectionEnd::ProtocolError(e);
            }
            Err(e) => break ConnectionEnd::ProtocolError(e),
        };
        let req = match decode_request(&mh, &body) {
            Ok(r) => r,
            Err(e @ FrameError::UnexpectedType { .. }) => {
                tracing::debug!(error = %e, "ignoring frame");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad request");
                send_status(&tx, mh.stream_id, Code::INVALID_ARGUMENT, e.to_string());
                continue;
            }
        };
        let path = format!("/{}/{}", req.service, req.method);
        if !services.has(&path) {
            send_status(
                &tx,
                mh.stream_id,
                Code::UNIMPLEMENTED,
                format!("{path} is not supported"),
            );
            continue;
        }
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            send_status(
                &tx,
                mh.stream_id,
                Code::RESOURCE_EXHAUSTED,
                "too many requests in flight",
            );
            continue;
        }
        let services = services.clone();
        let tx2 = tx.clone();
        let in_flight2 = in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("ttrpc-req".into())
            .spawn(move || {
                handle_request(&services, &path, fd, mh, req, tx2);
                in_flight2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            send_status(&tx, mh.stream_id, Code::RESOURCE_EXHAUSTED, e.to_string());
        }
    };
    drop(tx);
    // The writer ends once every in-flight handler has answered and dropped its sender; do not
    // wait for long-polls (wait, OOM events) that may never answer on a dead connection: their
    // answers go nowhere, the stream is closed now.
    if let Ok(handle) = writer_thread {
        if in_flight.load(Ordering::SeqCst) == 0 {
            let _ = handle.join();
        }
    }
    match writer.try_lock_for(Duration::from_secs(1)) {
        Some(mut w) => *w = None,
        None => tracing::warn!("connection writer busy: not closed"),
    }
    end
}

fn handle_request(
    services: &Services,
    path: &str,
    fd: RawFd,
    mh: MessageHeader,
    req: Request,
    tx: mpsc::Sender<(MessageHeader, Vec<u8>)>,
) {
    let Some(handler) = services.methods.get(path) else {
        return;
    };
    let ctx = TtrpcContext {
        fd,
        cancel_rx: crossbeam_channel::never(),
        mh,
        res_tx: tx.clone(),
        metadata: ttrpc::context::from_pb(&req.metadata),
        timeout_nano: req.timeout_nano,
        conn_ctx: Arc::new(ttrpc::ConnectionContext::default()),
    };
    // A panicking handler (only possible with panic=unwind builds) must not take the
    // connection down with it: answer INTERNAL instead.
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handler(ctx, req)));
    let outcome = match outcome {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(path, "request handler panicked");
            send_status(
                &tx,
                mh.stream_id,
                Code::INTERNAL,
                format!("{path}: handler panicked"),
            );
            return;
        }
    };
    if let Err(e) = outcome {
        // The handler answers itself on success and on service errors; an error here means the
        // payload did not decode (or the answer could not be encoded).
        let (code, msg) = match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => (Code::INVALID_ARGUMENT, other.to_string()),
        };
        send_status(&tx, mh.stream_id, code, msg);
    }
}

fn write_loop(w: &parking_lot::Mutex<Option<File>>, rx: mpsc::Receiver<(MessageHeader, Vec<u8>)>) {
    for (mut mh, payload) in rx {
        mh.length = payload.len() as u32;
        let head: Vec<u8> = mh.into();
        let mut frame = head;
        frame.extend_from_slice(&payload);
        let mut w = w.lock();
        let Some(file) = w.as_mut() else {
            continue; // the connection ended: nobody reads the answer
        };
        if let Err(e) = file.write_all(&frame) {
            tracing::debug!(error = %e, "connection write failed");
            // Keep draining so handlers never block on a full channel.
            continue;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_is_bounded() {
        let mut head = [0u8; MESSAGE_HEADER_LENGTH];
        head[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        head[8] = MESSAGE_TYPE_REQUEST;
        assert!(matches!(
            parse_header(&head),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame(&head),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let body = [0xffu8; 7];
        let mut frame = Vec::new();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&1u32.to_be_bytes());
        frame.push(MESSAGE_TYPE_REQUEST);
        frame.push(0);
        frame.extend_from_slice(&body);
        assert!(matches!(
            decode_frame(&frame),
            Err(FrameError::BadRequest { stream_id: 1, .. })
        ));
        assert!(matches!(
            decode_frame(&frame[..12]),
            Err(FrameError::Truncated(_))
        ));
    }

    #[test]
    fn a_real_request_decodes() {
        let mut req = Request::new();
        req.service = "hull.agent.Health".into();
        req.method = "Check".into();
        let body = <Request as Codec>::encode(&req).unwrap();
        let mh = MessageHeader::new_request(3, body.len() as u32);
        let mut frame: Vec<u8> = mh.into();
        frame.extend_from_slice(&body);
        let (mh, req, used) = decode_frame(&frame).unwrap();
        assert_eq!((mh.stream_id, used), (3, frame.len()));
        assert_eq!(req.method, "Check");
    }
}
