//! Network helpers for the pod networking tests (CRI + CNI, Docker, Podman): a private
//! subnet and bridge name reserved per test, the CNI plugins and a CNI bridge network
//! list, an HTTP GET and a one-line TCP server on the host, and the leftovers to look for
//! (taps, veths, network namespaces, processes in them).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The CNI plugins the tests use, from Debian's `containernetworking-plugins`.
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
/// Where Debian installs the CNI plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// How the pod's taps are named (`hull_net::tap_name(i)` starts with it).
pub const TAP_PREFIX: &str = "hulltap";
/// The MTU the tests give their pod networks (not the host's 1500, so it is seen to arrive).
pub const MTU: u32 = 1400;

/// Reservations live here: one directory per subnet number, holding the owner's pid.
const RESERVATIONS: &str = "/run/hull-nettests";

/// A private IPv4 /24 and IPv6 /64 with the bridge that carries them, reserved for this
/// test across processes. Dropping it deletes the bridge (if a test's network made one)
/// and frees the reservation.
pub struct Subnet {
    /// The subnet's number (1..=250): 10.217.N.0/24 and fd00:217:N::/64.
    pub n: u8,
}

impl Subnet {
    /// Reserve a subnet number that no live process holds and no host route uses.
    pub fn reserve() -> Self {
        std::fs::create_dir_all(RESERVATIONS).expect("create /run/hull-nettests");
        let routes = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-4", "route"])
                .output()
                .expect("ip route (apt-get install iproute2)")
                .stdout,
        )
        .into_owned();
        let start = (std::process::id() % 250) as u8;
        for i in 0..250u8 {
            let n = ((start as u16 + i as u16) % 250 + 1) as u8;
            let s = Self { n };
            if routes.contains(&format!("10.217.{n}."))
                || Path::new("/sys/class/net").join(s.bridge()).exists()
            {
                continue;
            }
            let dir = Path::new(RESERVATIONS).join(n.to_string());
            if std::fs::create_dir(&dir).is_err() {
                // Held: by a live process, or stale (its owner died without dropping it).
                let owner = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if alive || owner.is_empty() {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&dir);
                if std::fs::create_dir(&dir).is_err() {
                    continue;
                }
            }
            std::fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
            return s;
        }
        panic!("no free test subnet 10.217.N.0/24 (N = 1..250) under {RESERVATIONS}");
    }

    /// The bridge's name (at most 15 bytes, as Linux wants).
    pub fn bridge(&self) -> String {
        format!("hullbr{}", self.n)
    }

    /// The network's name in CNI, Docker and Podman.
    pub fn network(&self) -> String {
        format!("hullnet{}", self.n)
    }

    /// The IPv4 subnet, CIDR.
    pub fn v4(&self) -> String {
        format!("10.217.{}.0/24", self.n)
    }

    /// The IPv4 gateway (the bridge's address).
    pub fn gw4(&self) -> IpAddr {
        format!("10.217.{}.1", self.n).parse().unwrap()
    }

    /// The IPv6 subnet, CIDR.
    pub fn v6(&self) -> String {
        format!("fd00:217:{}::/64", self.n)
    }

    /// The IPv6 gateway (the bridge's address).
    pub fn gw6(&self) -> IpAddr {
        format!("fd00:217:{}::1", self.n).parse().unwrap()
    }

    /// A CNI network list: `bridge` (this subnet's bridge as the pods' gateway, MTU
    /// [`MTU`], IPv4 and IPv6 from host-local with its state in `ipam_dir`), `portmap`.
    pub fn cni_conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.network(),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge(),
                    "isGateway": true,
                    "ipMasq": false,
                    "mtu": MTU,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": ipam_dir,
                        "ranges": [[{"subnet": self.v4()}], [{"subnet": self.v6()}]],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string()
    }

    /// Veths (or any links) enslaved to this subnet's bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let dir = Path::new("/sys/class/net").join(self.bridge()).join("brif");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wait (bounded) until the bridge holds `addr` and it is usable (IPv6: past DAD).
    pub fn wait_for_address(&self, addr: IpAddr) {
        let ok = crate::wait_until(Duration::from_secs(15), || {
            TcpListener::bind(SocketAddr::new(addr, 0)).is_ok()
        });
        assert!(
            ok,
            "{addr} never became usable on bridge {}: {}",
            self.bridge(),
            show_link(&self.bridge())
        );
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(self.bridge()).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge()])
                .status();
        }
        let _ = std::fs::remove_dir_all(Path::new(RESERVATIONS).join(self.n.to_string()));
    }
}

/// `ip addr show dev LINK` (for failure messages).
pub fn show_link(link: &str) -> String {
    Command::new("ip")
        .args(["addr", "show", "dev", link])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Symlink the CNI plugins the tests use from [`CNI_PLUGIN_DIR`] into `bin_dir`; fails
/// loudly when the package is missing.
pub fn link_cni_plugins(bin_dir: &Path) {
    std::fs::create_dir_all(bin_dir).unwrap();
    for p in CNI_PLUGINS {
        let src = Path::new(CNI_PLUGIN_DIR).join(p);
        assert!(
            src.is_file(),
            "{} missing: apt-get install containernetworking-plugins",
            src.display()
        );
        let dst = bin_dir.join(p);
        if !dst.exists() {
            std::os::unix::fs::symlink(&src, dst).unwrap();
        }
    }
}

/// `GET PATH` over HTTP/1.0 from `addr`, retried until `limit` (the server may still be
/// starting): the response body.
pub fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match try_http_get(addr, path) {
            Ok((status, body)) if status.contains(" 200 ") => return body,
            Ok((status, body)) => last = format!("{status}: {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("GET http://{addr}{path} failed for {limit:?}: {last}");
}

fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// A TCP server on the host that takes one connection at a time and returns what the peer
/// sent before closing (what `echo hi | nc ADDR PORT` in a pod sends).
pub struct LineServer {
    listener: TcpListener,
}

impl LineServer {
    /// Listen on `addr` at a free port.
    pub fn bind(addr: IpAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(addr, 0))
            .unwrap_or_else(|e| panic!("bind a test server on {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        Self { listener }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Accept one connection within `limit` and read its first line; `None` when nobody came.
    pub fn accept_line(&self, limit: Duration) -> Option<(SocketAddr, String)> {
        let deadline = Instant::now() + limit;
        loop {
            match self.listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = Vec::new();
                    let mut b = [0u8; 256];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&b[..n]);
                        if buf.contains(&b'\n') {
                            break;
                        }
                    }
                    let _ = s.write_all(b"bye\n");
                    return Some((peer, String::from_utf8_lossy(&buf).trim().to_string()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

/// Links in the host's network namespace whose name starts with `prefix`.
pub fn host_links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Links named `prefix*` in the network namespace at `netns` (a bind-mounted namespace
/// file), by `ip -n`-style entry with nsenter; empty when the namespace is gone.
pub fn links_in_netns(netns: &Path, prefix: &str) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Qdiscs of kind `ingress` in the network namespace at `netns` (`tc qdisc show` lines).
pub fn ingress_qdiscs_in_netns(netns: &Path) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["tc", "qdisc", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ingress"))
        .map(String::from)
        .collect()
}

/// The inode of a namespace file (`/proc/PID/ns/net`, a bind mount under /run/netns).
pub fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Pids of processes whose network namespace has inode `ino` (a VMM or tap holder left
/// behind keeps a pod's namespace alive after its bind mount is gone).
pub fn processes_in_netns(ino: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if ns_inode(&e.path().join("ns/net")) == Some(ino) {
            out.push(pid);
        }
    }
    out
}

/// The kind of every process in `pids` (`comm`), for failure messages.
pub fn describe(pids: &[i32]) -> Vec<String> {
    pids.iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} {}", comm.trim())
        })
        .collect()
}

/// `iptables-save` and `ip6tables-save` lines that mention `needle` (portmap's chains
/// carry the network's name in their comments).
pub fn iptables_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        if let Ok(o) = Command::new(save).output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(String::from),
            );
        }
    }
    out
}

/// A free TCP port on the host (bound and released: a small race, fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Network namespaces bind-mounted at these paths (a CRI pod's `/run/netns/cni-*`): dropping
/// it unmounts and removes any still there, which deletes their veths (a failed test's).
#[derive(Default)]
pub struct NamespaceFiles(pub Vec<std::path::PathBuf>);

impl Drop for NamespaceFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.exists() {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The chains `portmap` makes for every network (`CNI-HOSTPORT-*`) and per container
/// (`CNI-DN-*`), in IPv4 and IPv6 `nat` tables.
const PORTMAP_CHAINS: [&str; 2] = ["CNI-HOSTPORT-", "CNI-DN-"];

/// portmap's iptables chains that did not exist when it was made: dropping it removes the
/// jumps to them and the chains (the per-container ones are gone already when CNI DEL ran).
/// It also holds a lock for its life: portmap's shared chains (CNI-HOSTPORT-DNAT, ...) made by
/// one test must not be removed under another test of the same binary still using them.
pub struct PortmapChains {
    before: Vec<(&'static str, String)>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static PORTMAP_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PortmapChains {
    /// Waits until no other test of this binary holds the portmap chains, then notes the
    /// portmap chains there are now.
    pub fn snapshot() -> Self {
        let guard = PORTMAP_USERS.lock().unwrap_or_else(|e| e.into_inner());
        Self {
            before: portmap_chains(),
            _one_at_a_time: guard,
        }
    }
}

fn portmap_chains() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let Ok(o) = Command::new(tool).args(["-t", "nat", "-S"]).output() else {
            continue;
        };
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(chain) = l.strip_prefix("-N ") {
                if PORTMAP_CHAINS.iter().any(|p| chain.starts_with(p)) {
                    out.push((tool, chain.to_string()));
                }
            }
        }
    }
    out
}

impl Drop for PortmapChains {
    fn drop(&mut self) {
        let new: Vec<_> = portmap_chains()
            .into_iter()
            .filter(|c| !self.before.contains(c))
            .collect();
        let nat = |tool: &str, args: &[&str]| {
            let _ = Command::new(tool).args(["-t", "nat"]).args(args).status();
        };
        // Empty them (their jumps to each other go), drop the jumps from other chains,
        // then delete them.
        for (tool, chain) in &new {
            nat(tool, &["-F", chain]);
        }
        for (tool, chain) in &new {
            let rules = Command::new(tool)
                .args(["-t", "nat", "-S"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for rule in rules
                .lines()
                .filter(|l| l.starts_with("-A ") && l.ends_with(&format!("-j {chain}")))
            {
                let mut args = vec!["-D".to_string()];
                args.extend(iptables_words(&rule[3..]));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                nat(tool, &args);
            }
        }
        for (tool, chain) in &new {
            nat(tool, &["-X", chain]);
        }
    }
}

/// The words of an `iptables -S` rule (double quotes group, `\"` is a quote).
fn iptables_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for ch in rule.chars() {
        match ch {
            _ if escaped => {
                cur.push(ch);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    #[test]
    fn iptables_words_keep_quoted_comments_whole() {
        assert_eq!(
            super::iptables_words(
                r#"POSTROUTING -m comment --comment "CNI \"x\" y" -j CNI-HOSTPORT-MASQ"#
            ),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                r#"CNI "x" y"#,
                "-j",
                "CNI-HOSTPORT-MASQ"
            ]
        );
    }
}
