//! The agent survives hostile input: raw garbage, huge and truncated frames, invalid protobuf,
//! unknown methods, bad ids, `../` paths, specs it cannot honour. It still answers afterwards.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::TestAgent;
use hull_agent_client::{AgentClient, AgentClientError, Storage};
use hull_protocols::ttrpc::proto::{
    Codec, MessageHeader, Request, Response, MESSAGE_HEADER_LENGTH,
};
use hull_protocols::ttrpc::Code;

fn raw(agent: &TestAgent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn frame(stream_id: u32, body: &[u8]) -> Vec<u8> {
    let mut f: Vec<u8> = MessageHeader::new_request(stream_id, body.len() as u32).into();
    f.extend_from_slice(body);
    f
}

fn read_response(s: &mut UnixStream) -> (u32, Response) {
    let mut head = [0u8; MESSAGE_HEADER_LENGTH];
    s.read_exact(&mut head).expect("a response frame");
    let mh = MessageHeader::from(&head[..]);
    let mut body = vec![0u8; mh.length as usize];
    s.read_exact(&mut body).unwrap();
    (mh.stream_id, <Response as Codec>::decode(&body).unwrap())
}

fn status_code(r: &Response) -> Code {
    r.status.code.enum_value_or_default()
}

/// The peer closed the connection (EOF or reset) rather than leaving it hanging.
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

fn request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut req = Request::new();
    req.service = service.into();
    req.method = method.into();
    req.payload = payload.to_vec();
    <Request as Codec>::encode(&req).unwrap()
}

fn code_of(e: AgentClientError) -> Code {
    e.code().unwrap_or_else(|| panic!("not an rpc status: {e}"))
}

#[test]
fn garbage_frames_and_protobuf() {
    let agent = TestAgent::start();
    let client = agent.client();
    assert!(client.check().unwrap());

    // a well-framed body that is not protobuf: error reply on that stream, connection lives on
    let mut s = raw(&agent);
    s.write_all(&frame(1, &[0xff; 20])).unwrap();
    let (sid, res) = read_response(&mut s);
    assert_eq!((sid, status_code(&res)), (1, Code::INVALID_ARGUMENT));
    // unknown service/method
    s.write_all(&frame(3, &request("hull.agent.Nope", "Nothing", &[])))
        .unwrap();
    let (sid, res) = read_response(&mut s);
    assert_eq!((sid, status_code(&res)), (3, Code::UNIMPLEMENTED));
    // a real method with a payload that is not its message
    s.write_all(&frame(
        5,
        &request(
            "hull.agent.AgentService",
            "CreateContainer",
            &[0x0a, 0xff, 0x01],
        ),
    ))
    .unwrap();
    let (sid, res) = read_response(&mut s);
    assert_eq!((sid, status_code(&res)), (5, Code::INVALID_ARGUMENT));
    // and a good request on the same connection still works
    s.write_all(&frame(7, &request("hull.agent.Health", "Check", &[])))
        .unwrap();
    let (sid, res) = read_response(&mut s);
    assert_eq!((sid, status_code(&res)), (7, Code::OK));

    // a header announcing 4 GiB: refused and closed without reading a body
    let mut s = raw(&agent);
    let mut head = vec![0xff, 0xff, 0xff, 0xf0];
    head.extend_from_slice(&[0, 0, 0, 9, 1, 0]);
    s.write_all(&head).unwrap();
    let (sid, res) = read_response(&mut s);
    assert_eq!((sid, status_code(&res)), (9, Code::RESOURCE_EXHAUSTED));
    assert_closed(&mut s);

    // a truncated frame, then the peer goes away
    let mut s = raw(&agent);
    let f = frame(9, &request("hull.agent.Health", "Check", &[]));
    s.write_all(&f[..f.len() - 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s);

    // a truncated header
    let mut s = raw(&agent);
    s.write_all(&[0, 0, 0]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s);

    // pseudo-random garbage of many sizes
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..50 {
        let mut s = raw(&agent);
        let len = 1 + (round * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert_closed(&mut s);
    }

    // the first client, and a new one, still get answers
    assert!(client.check().unwrap());
    assert!(agent.client().check().unwrap());
    assert!(agent.log().lines().count() > 0);
}

#[test]
fn paths_ids_and_specs_it_cannot_honour() {
    let agent = TestAgent::start();
    let c: AgentClient = agent.client();
    let rootfs = agent.busybox_rootfs("ok");
    let spec = agent.spec("ok", &["/bin/true"], false, &["CAP_KILL"]);

    // rootfs outside the allowed roots
    for bad in ["../../etc", "/etc", "ok/../../../etc", "ok/rootfs/../../.."] {
        let e = c.create_container("p1", &spec, bad, vec![]).unwrap_err();
        assert_eq!(code_of(e), Code::PERMISSION_DENIED, "{bad}");
    }
    // a symlink inside the root that points out of it
    std::os::unix::fs::symlink("/", agent.shared.join("escape")).unwrap();
    let e = c
        .create_container("p1", &spec, "escape", vec![])
        .unwrap_err();
    assert_eq!(code_of(e), Code::PERMISSION_DENIED);
    // storages: mount point outside the roots, or a filesystem type not allowed
    let st = |fstype: &str, mp: &str| Storage {
        source: "tmpfs".into(),
        fstype: fstype.into(),
        mount_point: mp.into(),
        ..Default::default()
    };
    let e = c
        .create_container("p1", &spec, &rootfs, vec![st("tmpfs", "../../../tmp/x")])
        .unwrap_err();
    assert_eq!(code_of(e), Code::PERMISSION_DENIED);
    let e = c
        .create_container("p1", &spec, &rootfs, vec![st("proc", "m")])
        .unwrap_err();
    assert_eq!(code_of(e), Code::INVALID_ARGUMENT);

    // bad container ids (runc's rule: letters, digits, '_', '+', '-', '.'; not "." or "..")
    for id in ["", "../x", "a/b", ".", "..", "a b"] {
        let e = c.create_container(id, &spec, &rootfs, vec![]).unwrap_err();
        assert_eq!(code_of(e), Code::INVALID_ARGUMENT, "{id:?}");
    }
    // specs: not JSON, no process, empty args, an unknown namespace
    let e = c
        .create_container("p1", b"{not json", &rootfs, vec![])
        .unwrap_err();
    assert_eq!(code_of(e), Code::INVALID_ARGUMENT);
    let e = c
        .create_container(
            "p1",
            br#"{"ociVersion":"1.0.2","linux":{}}"#,
            &rootfs,
            vec![],
        )
        .unwrap_err();
    assert_eq!(code_of(e), Code::INVALID_ARGUMENT);
    let mut v: serde_json::Value = serde_json::from_slice(&spec).unwrap();
    v["process"]["args"] = serde_json::json!([]);
    let e = c
        .create_container("p1", &serde_json::to_vec(&v).unwrap(), &rootfs, vec![])
        .unwrap_err();
    assert_eq!(code_of(e), Code::INVALID_ARGUMENT);
    let mut v: serde_json::Value = serde_json::from_slice(&spec).unwrap();
    v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
    let e = c
        .create_container("p1", &serde_json::to_vec(&v).unwrap(), &rootfs, vec![])
        .unwrap_err();
    assert_eq!(code_of(e), Code::INVALID_ARGUMENT);
    // a spec libcontainer refuses: the program does not exist in the rootfs
    let missing = agent.spec("p1", &["/no/such/program"], false, &["CAP_KILL"]);
    let e = c
        .create_container("p1", &missing, &rootfs, vec![])
        .unwrap_err();
    assert_eq!(code_of(e), Code::INTERNAL);

    // operations on things that do not exist
    assert_eq!(
        code_of(c.start_container("p1").unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        code_of(c.signal_process("zz", "", 9, false).unwrap_err()),
        Code::NOT_FOUND
    );

    // after all that, the same id can be created, run and removed
    assert!(c.check().unwrap());
    c.create_container(
        "p1",
        &agent.spec("p1", &["/bin/true"], false, &["CAP_KILL"]),
        &rootfs,
        vec![],
    )
    .unwrap();
    c.start_container("p1").unwrap();
    assert_eq!(
        c.wait_process("p1", "", Duration::from_secs(20)).unwrap(),
        0
    );
    // an exec id that does not exist, an exec with a bad spec
    assert_eq!(
        code_of(
            c.wait_process("p1", "nope", Duration::from_secs(1))
                .unwrap_err()
        ),
        Code::NOT_FOUND
    );
    // exec ids name the agent's console sockets: plain, visible file names only
    let p =
        serde_json::to_vec(&common::process_json(&["/bin/true"], false, &["CAP_KILL"])).unwrap();
    for bad in ["", ".hidden", "../x", "a/b"] {
        let e = c.exec_process("p1", bad, &p).unwrap_err();
        assert_eq!(code_of(e), Code::INVALID_ARGUMENT, "{bad:?}");
    }
    c.remove_container("p1").unwrap();
    assert!(c.check().unwrap());
}

#[test]
fn a_stalled_frame_is_dropped_after_its_deadline() {
    // Header and part of the body, then silence with the connection left open: the agent gives
    // the body 10 s, then closes the connection, and serves everyone else meanwhile.
    let agent = TestAgent::start();
    let c = agent.client();
    let mut s = raw(&agent);
    let f = frame(1, &request("hull.agent.Health", "Check", &[]));
    s.write_all(&f[..MESSAGE_HEADER_LENGTH + 2]).unwrap();
    let t = std::time::Instant::now();
    assert!(c.check().unwrap());
    assert_closed(&mut s);
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    assert!(c.check().unwrap());
}
