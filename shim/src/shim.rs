//! The shim binary's verbs: `start` (find or launch the pod's shim), the server, and
//! `delete` (clean up after a shim that died).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::Flags;
use containerd_shim::{Config, Error as CrateError, ExitSignal, Shim, StartOpts};
use hull_container::ContainerRoot;

use crate::config::DEFAULT_SHIM_ROOT;
use crate::events::now;
use crate::service::{annotation, BundleState, Service, BUNDLE_STATE_FILE};
use crate::{logging, rootfs};

/// CRI's annotation naming a container's pod sandbox: its containers share one shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The shim process.
pub struct HullShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    bundle: String,
}

fn other(what: &str, e: impl std::fmt::Display) -> CrateError {
    CrateError::Other(format!("{what}: {e}"))
}

/// Whether a shim is serving on `address` now.
fn serving(address: &str) -> bool {
    UnixStream::connect(address.strip_prefix("unix://").unwrap_or(address)).is_ok()
}

impl Shim for HullShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() && !args.socket.is_empty() {
            logging::init(args.debug);
        }
        Self {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let cwd = std::env::current_dir().map_err(|e| other("current dir", e))?;
        // One shim per pod: a CRI container joins its sandbox's shim.
        let grouping = annotation(&cwd, SANDBOX_ID_ANNOTATION).unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        if serving(&address) {
            write_address(&address)?;
            return Ok(address);
        }
        let exe = std::env::current_exe().map_err(|e| other("own executable", e))?;
        let mut cmd = Command::new(exe);
        cmd.current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .args([
                "-namespace",
                &opts.namespace,
                "-id",
                &opts.id,
                "-address",
                &opts.address,
                "-publish-binary",
                &opts.publish_binary,
                "-socket",
                &address,
            ]);
        if opts.debug {
            cmd.arg("-debug");
        }
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setsid(2), which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| other("spawn the shim server", e))?;
        // The server closes this pipe once it listens (or once it found a running twin).
        if let Some(mut out) = child.stdout.take() {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        }
        if !serving(&address) {
            let status = child.try_wait().ok().flatten();
            return Err(other(
                "shim server",
                format!("not serving on {address} (exit: {status:?})"),
            ));
        }
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().map_err(|e| other("current dir", e))?
        } else {
            PathBuf::from(&self.bundle)
        };
        let record: Option<BundleState> = std::fs::read(bundle.join(BUNDLE_STATE_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let (root, systemd, vm_dir) = match record {
            Some(r) => (r.root, r.systemd_cgroup, r.vm_dir),
            None => (
                Path::new(DEFAULT_SHIM_ROOT).join(&self.namespace),
                false,
                None,
            ),
        };
        if let Some(dir) = &vm_dir {
            // The VM died with its shim (PDEATHSIG); its shared dir's mounts did not, nor
            // the redirects to its taps on the pod's interfaces.
            hull_runtime::pod::vm::clean_up_network(dir);
            rootfs::unmount(&self.id, dir);
            let _ = std::fs::remove_dir_all(dir);
        }
        // A host container's state outlives its shim; a vm container's went with the VM.
        match ContainerRoot::new(&root, systemd).delete(&self.id, true) {
            Ok(()) | Err(hull_container::Error::NotFound(_)) => {}
            Err(e) => eprintln!(
                "containerd-shim-hull-v2: delete container {}: {}",
                self.id,
                hull_container::chain(&e)
            ),
        }
        rootfs::unmount(&self.id, &bundle.join("rootfs"));
        let _ = std::fs::remove_file(bundle.join(BUNDLE_STATE_FILE));
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(now()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, _publisher: RemotePublisher) -> Service {
        Service::new(
            &self.namespace,
            std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            Arc::clone(&self.exit),
        )
    }
}
