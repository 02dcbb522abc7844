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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// The health check, whose request carries the host client's session.
const HEALTH_CHECK: &str = "/hull.agent.Health/Check";

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
    // One stream may carry several host clients in turn: a restored VM's host reconnects to
    // the port while the guest, which never saw the old client go, serves on. Each client
    // announces its session in its first Check; from then on, answers to requests read
    // before it are dropped: they would reach the new client under stream ids it reuses
    // (an old long-poll's end of stream taken for a wait's exit status 0).
    let epoch = Arc::new(AtomicU64::new(0));
    let mut session = 0u64;

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
        if path == HEALTH_CHECK {
            let announced = announced_session(&req.payload);
            if announced != 0 && announced != session {
                if session != 0 {
                    tracing::info!(
                        in_flight = in_flight.load(Ordering::SeqCst),
                        "a new host client on this stream: the previous one's answers are dropped"
                    );
                }
                session = announced;
                epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
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
        let (epoch2, mine) = (Arc::clone(&epoch), epoch.load(Ordering::SeqCst));
        let spawned = std::thread::Builder::new()
            .name("ttrpc-req".into())
            .spawn(move || {
                // The handler answers before it returns: hold the answer back until then, and
                // pass it on only while the client that asked is still the stream's client.
                let (answer_tx, answers) = mpsc::channel();
                handle_request(&services, &path, fd, mh, req, answer_tx);
                for answer in answers.try_iter() {
                    if epoch2.load(Ordering::SeqCst) == mine {
                        let _ = tx2.send(answer);
                    } else {
                        tracing::debug!(
                            stream_id = mh.stream_id,
                            path,
                            "answer to a previous host client dropped"
                        );
                    }
                }
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

/// The session a Check request's payload announces (0: none, or undecodable).
fn announced_session(payload: &[u8]) -> u64 {
    use hull_protocols::protobuf::Message;
    hull_protocols::health::CheckRequest::parse_from_bytes(payload)
        .map(|r| r.session)
        .unwrap_or(0)
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

    /// Answers with the request's payload once the test has released that payload.
    struct Gated(Arc<parking_lot::Mutex<Vec<Vec<u8>>>>);

    impl MethodHandler for Gated {
        fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
            while !self.0.lock().contains(&req.payload) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut res = Response::new();
            res.set_status(ttrpc::get_status(Code::OK, ""));
            res.payload = req.payload;
            let buf = <Response as Codec>::encode(&res).unwrap();
            let mh = MessageHeader::new_response(ctx.mh.stream_id, buf.len() as u32);
            ctx.res_tx.send((mh, buf)).unwrap();
            Ok(())
        }
    }

    fn send(to: &mut std::os::unix::net::UnixStream, stream_id: u32, path: &str, payload: Vec<u8>) {
        let (service, method) = path[1..].split_once('/').unwrap();
        let mut req = Request::new();
        req.service = service.into();
        req.method = method.into();
        req.payload = payload;
        let body = <Request as Codec>::encode(&req).unwrap();
        let mut frame: Vec<u8> = MessageHeader::new_request(stream_id, body.len() as u32).into();
        frame.extend_from_slice(&body);
        to.write_all(&frame).unwrap();
    }

    fn answer(from: &mut std::os::unix::net::UnixStream) -> (u32, Vec<u8>) {
        let mut head = [0u8; MESSAGE_HEADER_LENGTH];
        from.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let stream_id = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let mut body = vec![0u8; len];
        from.read_exact(&mut body).unwrap();
        let res = <Response as Codec>::decode(&body).unwrap();
        (stream_id, res.payload)
    }

    fn check(session: u64) -> Vec<u8> {
        use hull_protocols::protobuf::Message;
        hull_protocols::health::CheckRequest {
            session,
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    /// A restored VM's port: the host's new client (its stream ids starting at 1 again) must
    /// never get the answer to the previous client's request under a reused stream id.
    #[test]
    fn answers_to_a_previous_host_client_on_the_stream_are_dropped() {
        let released = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(HEALTH_CHECK.into(), Box::new(Gated(Arc::clone(&released))));
        methods.insert(
            "/test.Slow/Wait".into(),
            Box::new(Gated(Arc::clone(&released))),
        );
        let services = Arc::new(Services { methods });
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let guest = File::from(std::os::fd::OwnedFd::from(guest));
        let writer = guest.try_clone().unwrap();
        std::thread::spawn(move || serve_connection(&services, guest, writer));
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        released.lock().extend([check(7), check(8)]);

        // The first client: its Check, then a long-poll on stream 3 that is still waiting
        // when the VM is saved.
        send(&mut host, 1, HEALTH_CHECK, check(7));
        assert_eq!(answer(&mut host), (1, check(7)));
        send(&mut host, 3, "/test.Slow/Wait", b"old".to_vec());
        // The restored VM's new client: Check, then its own long-poll on stream 3.
        send(&mut host, 1, HEALTH_CHECK, check(8));
        assert_eq!(answer(&mut host), (1, check(8)));
        send(&mut host, 3, "/test.Slow/Wait", b"new".to_vec());
        // The old long-poll ends first: its answer must not reach the new client.
        released.lock().push(b"old".to_vec());
        std::thread::sleep(Duration::from_millis(200));
        released.lock().push(b"new".to_vec());
        assert_eq!(answer(&mut host), (3, b"new".to_vec()));

        // A client that keeps its session keeps its answers.
        send(&mut host, 5, "/test.Slow/Wait", b"again".to_vec());
        send(&mut host, 7, HEALTH_CHECK, check(8));
        assert_eq!(answer(&mut host), (7, check(8)));
        released.lock().push(b"again".to_vec());
        assert_eq!(answer(&mut host), (5, b"again".to_vec()));
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
