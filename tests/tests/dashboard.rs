//! `hull-dashboard` through the real binaries and a real browser: Debian's `chromium`,
//! headless, driven over its remote debugging protocol (CDP) by a small client here. The
//! page must list a running container with its isolation, and its terminal (xterm.js over
//! the dashboard's websocket to a pty) must run what is typed into it. And the listen
//! policy: a non-loopback address without a token is refused; with a token every request
//! must carry it.
//!
//! The terminal runs `hull exec -t ID /bin/sh` for a host container, and `hull console ID`
//! (a shell in the pod's guest, outside the container) for a vm container.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::*;
use serde_json::{json, Value};

/// Bound of one browser wait.
const PAGE_WAIT: Duration = Duration::from_secs(60);

/// A running `hull-dashboard`, killed on drop.
struct Dashboard {
    child: Child,
    /// Where it serves (a loopback address).
    addr: SocketAddr,
    /// Its stderr (logs), for failure messages.
    log: PathBuf,
    _dir: tempfile::TempDir,
    _containerd: Option<tempfile::TempDir>,
}

impl Dashboard {
    /// Starts `hull-dashboard ARGS` (with a `--listen` whose port is 0) and waits for the
    /// line naming its address.
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dashboard.log");
        let mut child = Command::new(bin("hull-dashboard"))
            .args(args)
            .env("RUST_LOG", "hull_dashboard=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start hull-dashboard");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("hull-dashboard: serving http://")
            .unwrap_or_else(|| {
                panic!(
                    "hull-dashboard printed {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let served: SocketAddr = url.trim_end_matches('/').parse().unwrap();
        // 0.0.0.0 serves loopback too.
        let addr = SocketAddr::from(([127, 0, 0, 1], served.port()));
        Dashboard {
            child,
            addr,
            log,
            _dir: dir,
            _containerd: None,
        }
    }

    /// Starts one on `listen` showing state root `root` alone (an empty containerd root),
    /// requiring `token` if given.
    fn for_root(listen: &str, token: Option<&str>, root: &std::path::Path) -> Self {
        let containerd = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--listen",
            listen,
            "--root",
            root.to_str().unwrap(),
            "--containerd-root",
            containerd.path().to_str().unwrap(),
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let mut d = Self::start(&args);
        d._containerd = Some(containerd);
        d
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code and body of `GET path` with extra header lines `headers` (a `Host`
/// header first replaces the default one).
fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let host = if headers.starts_with("Host:") {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\n{host}Connection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status in {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn status_of(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    get(addr, path, headers).0
}

/// Headless Chromium and one page of it, driven over CDP; killed on drop.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Debian's `chromium`; a host without it fails the test saying what to install.
    fn launch() -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let exe = std::env::split_paths(&path)
            .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the dashboard tests need a real browser: `apt-get install chromium` \
                     (scripts/setup-host installs it)"
                )
            });
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/UUID"
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("DevTools listening on ") {
                        break u.trim().to_string();
                    }
                    seen.push(l);
                }
                _ => panic!("chromium exited without a debugging address: {seen:#?}"),
            }
        };
        // Keep draining its stderr.
        std::thread::spawn(move || for _ in lines {});
        let host = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("CDP websocket");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Calls CDP `method` (on the page once attached); its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().expect("CDP read");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` (a string) until `ok` holds for it; its last value.
    fn wait_for(&mut self, what: &str, expr: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let v = self.eval(expr);
            let text = v.as_str().unwrap_or_default().to_string();
            if ok(&text) {
                return text;
            }
            if start.elapsed() > PAGE_WAIT {
                let body = self.eval("document.body.innerText");
                panic!("{what}: not within {PAGE_WAIT:?}; last {text:?}; page: {body}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// Types `text` into the focused element, then Enter.
    fn type_line(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "text": "\r"}),
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked first, so that its helper processes go with it.
        self.session.clear();
        self.next_id += 1;
        let close = json!({"id": self.next_id, "method": "Browser.close"});
        if self
            .ws
            .send(tungstenite::Message::text(close.to_string()))
            .is_ok()
        {
            wait_until(Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the browser's window to `width` x `height`; the terminal's (rows, cols) once it fitted.
fn resize_window(b: &mut Browser, width: u32, height: u32) -> (u16, u16) {
    let before = b.eval("session.term.rows + ' ' + session.term.cols");
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
    );
    let size = b.wait_for(
        "the terminal fitted to the window",
        "session.term.rows + ' ' + session.term.cols",
        |s| !s.is_empty() && (width == 1280 || s != before),
    );
    let mut it = size.split(' ').map(|n| n.parse::<u16>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// The window sizes (rows, cols) of the terminals on the stdin of `parent`'s children.
fn pty_sizes_under(parent: u32) -> Vec<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{parent}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in kids.split_whitespace() {
            let Ok(tty) = std::fs::File::open(format!("/proc/{pid}/fd/0")) else {
                continue;
            };
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one `winsize` into the live local.
            if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0 {
                out.push((ws.ws_row, ws.ws_col));
            }
        }
    }
    out
}

/// JS: the text of the page's row of container `id` ("" while there is none).
fn row_text(id: &str) -> String {
    format!("(document.querySelector('tr[data-id=\"{id}\"]') || {{innerText: ''}}).innerText")
}

/// JS: the terminal's screen text.
const TERMINAL_TEXT: &str =
    "(document.querySelector('#terminal .xterm-rows') || {innerText: ''}).innerText";

/// Opens the page at `page`, checks container `id`'s row (with `isolation` and whatever
/// `also` must show), opens its terminal and runs a command in it; the browser, on the
/// terminal.
fn page_lists_and_reaches(page: &str, id: &str, isolation: &str, also: &[&str]) -> Browser {
    let t = Instant::now();
    let mut b = Browser::launch();
    eprintln!("chromium up in {:?}", t.elapsed());
    b.navigate(page);
    let row = b.wait_for("the container's row", &row_text(id), |t| {
        t.contains(id) && t.contains(isolation) && also.iter().all(|a| t.contains(a))
    });
    eprintln!("row after {:?}: {row:?}", t.elapsed());
    let iso = b.eval(&format!(
        "document.querySelector('tr[data-id=\"{id}\"]').dataset.isolation"
    ));
    assert_eq!(iso, isolation, "{row}");

    b.eval(&format!(
        "document.querySelector('button[data-terminal=\"{id}\"]').click()"
    ));
    b.wait_for(
        "the terminal connected",
        "document.getElementById('terminal-status').textContent",
        |s| s == "connected",
    );
    // The shell's prompt, then a command typed as a person would.
    b.wait_for("a shell prompt", TERMINAL_TEXT, |t| t.contains('#'));
    b.eval("document.querySelector('#terminal .xterm-helper-textarea').focus()");
    b.type_line("echo hull-$((6*7))");
    let screen = b.wait_for("the command's output", TERMINAL_TEXT, |t| {
        t.contains("hull-42")
    });
    assert!(screen.contains("echo hull-$((6*7))"), "{screen}");
    eprintln!("terminal answered after {:?}", t.elapsed());
    b
}

#[test]
fn dashboard_lists_a_host_container_in_a_browser_and_its_terminal_runs_a_command() {
    let (h, _g) = hull_with_cleanup();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("dash");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    // A token on loopback too: the page must carry it to its assets, JSON and websocket.
    let d = Dashboard::for_root("127.0.0.1:0", Some("t0ken-42"), h.root.path());
    let mut browser = page_lists_and_reaches(&d.url("/?token=t0ken-42"), &id, "host", &["running"]);
    // The terminal's size reaches the pty of the process it runs, and follows the window.
    for (width, height) in [(1280, 900), (900, 600)] {
        let size = resize_window(&mut browser, width, height);
        assert!(
            wait_until(Duration::from_secs(20), || pty_sizes_under(d.child.id())
                .contains(&size)),
            "the terminal is {size:?}, its pty {:?}",
            pty_sizes_under(d.child.id())
        );
    }
    let log = d.log();
    assert!(log.contains("terminal opened"), "{log}");
}

#[test]
fn dashboard_refuses_a_non_loopback_address_without_a_token() {
    for cmd in [
        {
            let mut c = Command::new(bin("hull-dashboard"));
            c.args(["--listen", "0.0.0.0:0"]);
            c
        },
        {
            let mut c = Command::new(bin("hull"));
            c.args(["dashboard", "--listen", "0.0.0.0:0"]);
            c
        },
    ] {
        let mut cmd = cmd;
        cmd.env_remove("HULL_DASHBOARD_TOKEN");
        let out = output_with_timeout(cmd, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("--listen 0.0.0.0:0") && err.contains("token"),
            "{err}"
        );
    }
}

#[test]
fn dashboard_with_a_token_answers_401_without_it_and_200_with_it() {
    let h = Hull::new();
    let d = Dashboard::for_root("0.0.0.0:0", Some("s3cret"), h.root.path());
    let a = d.addr;
    for path in [
        "/",
        "/api/containers",
        "/assets/xterm.js",
        "/ws/terminal?root=/x&id=y",
    ] {
        assert_eq!(status_of(a, path, ""), 401, "{path} without a token");
        let wrong = if path.contains('?') {
            "&token=s3cre"
        } else {
            "?token=s3cre"
        };
        assert_eq!(
            status_of(a, &format!("{path}{wrong}"), ""),
            401,
            "{path}{wrong}"
        );
    }
    for path in ["/", "/api/containers", "/assets/xterm.js"] {
        assert_eq!(
            status_of(a, &format!("{path}?token=s3cret"), ""),
            200,
            "{path}"
        );
        let bearer = "Authorization: Bearer s3cret\r\n";
        assert_eq!(
            status_of(a, path, bearer),
            200,
            "{path} with a bearer token"
        );
    }
    // The websocket too: refused before the upgrade without the token.
    let url = format!("ws://{a}/ws/terminal?root=/x&id=y");
    match tungstenite::client(url.as_str(), TcpStream::connect(a).unwrap()) {
        Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status().as_u16(), 401)
        }
        other => panic!("websocket without a token: {:?}", other.map(|_| ())),
    }
    // With it, a root the dashboard does not show is refused, not run.
    let url = format!("{url}&token=s3cret");
    match tungstenite::client(url.as_str(), TcpStream::connect(a).unwrap()) {
        Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status().as_u16(), 404)
        }
        other => panic!("websocket to an unknown root: {:?}", other.map(|_| ())),
    }
    // The page served with the token links its assets with it.
    let (_, page) = get(a, "/?token=s3cret", "");
    assert!(page.contains("/assets/xterm.js?token=s3cret"), "{page}");
}

#[test]
fn dashboard_refuses_other_sites_pages() {
    let h = Hull::new();
    let d = Dashboard::for_root("127.0.0.1:0", None, h.root.path());
    let a = d.addr;
    let own = format!("Origin: http://{a}\r\n");
    assert_eq!(status_of(a, "/api/containers", &own), 200);
    // A page of another site: no terminal, no JSON.
    let other = "Origin: https://evil.example\r\n";
    assert_eq!(status_of(a, "/api/containers", other), 403);
    assert_eq!(status_of(a, "/ws/terminal?root=/x&id=y", other), 403);
    // Another name resolving to 127.0.0.1 (DNS rebinding), with no token to stop it.
    let rebound = "Host: evil.example:8930\r\nOrigin: http://evil.example:8930\r\n";
    assert_eq!(status_of(a, "/", rebound), 403);
}

#[test]
fn dashboard_shows_a_vm_container_with_its_guest_and_its_terminal_runs_a_command() {
    let Some(a) = guest_artefacts() else {
        return;
    };
    let (h, _g) = hull_with_cleanup();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("vm.toml");
    std::fs::write(&cfg, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("dashvm");
    let t = Instant::now();
    let run = h.cmd(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "-d",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let out = output_with_timeout(run, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("vm container up in {:?}", t.elapsed());
    // The guest's release, as the container sees it: the page must show the same.
    let release = h.ok(&["exec", &id, "uname", "-r"]).trim().to_string();
    assert!(release.starts_with("6.1."), "{release}");
    let d = Dashboard::for_root("127.0.0.1:0", None, h.root.path());
    let mut browser = page_lists_and_reaches(
        &d.url("/"),
        &id,
        "vm",
        &[&format!("kernel {release}"), "1 vCPU", "256 MiB", "running"],
    );
    // The terminal's shell runs in the guest (on its kernel, not the host's), outside the
    // container: the guest's PID 1 is the agent.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(host.trim(), release);
    browser.type_line("echo kernel-$(uname -r)-init-$(cat /proc/1/comm)-end");
    browser.wait_for("the guest's release in the terminal", TERMINAL_TEXT, |t| {
        t.contains(&format!("kernel-{release}-init-hull-agent-end"))
    });
    // The window's size reaches the terminal's pty. (`hull console` and `hull exec -t` do
    // not pass it on into the guest's or the container's pty yet: `stty size` there fails.)
    let size = resize_window(&mut browser, 900, 600);
    assert!(
        wait_until(Duration::from_secs(20), || pty_sizes_under(d.child.id())
            .contains(&size)),
        "the terminal is {size:?}, its pty {:?}",
        pty_sizes_under(d.child.id())
    );
}
