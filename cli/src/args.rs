//! The runc-compatible command line, as plain clap structs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// `hull --version`: hull's version and the OCI runtime spec version it implements.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            hull_container::OCI_VERSION
        )
    })
}

/// hull: an OCI container runtime whose isolation is a per-pod choice.
#[derive(Debug, Parser)]
#[command(name = "hull", version = version_text(), about)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/hull")]
    pub root: PathBuf,
    /// Log file (default: stderr). Before the verb, as runc takes it (`hull console` has a
    /// `--log` of its own).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd to manage cgroups.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// hull config file (isolation, [vm]); default /etc/hull/config.toml when it exists.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Accepted for runc compatibility (rootless mode is detected).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility (checkpointing is not supported).
    #[arg(long, hide = true)]
    pub criu: Option<PathBuf>,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=info msg="..."`.
    Text,
    /// One JSON object a line: `{"level":..,"msg":..,"time":..}`.
    Json,
}

/// Output format of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human table.
    Table,
    /// JSON.
    Json,
}

/// Options shared by `create` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// File to write the init pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Do not use pivot_root (for a ramdisk root).
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a session keyring (hull never does).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N extra fds (3..3+N) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Container id.
    pub id: String,
}

/// CRIU options `checkpoint` and `restore` share (runc's): they apply to host containers,
/// whose processes CRIU saves; a vm pod's whole VM is saved, which keeps all of them anyway.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CriuArgs {
    /// Directory of the checkpoint's files.
    #[arg(long)]
    pub image_path: PathBuf,
    /// Directory for CRIU's logs and work files (default: the image path).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Allow open TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long)]
    pub shell_job: bool,
    /// Handle file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// How cgroups are checkpointed and restored (soft, full, strict, ignore).
    #[arg(long)]
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces left empty (a host container's).
    #[arg(long)]
    pub empty_ns: Vec<String>,
    /// Deduplicate the image's pages.
    #[arg(long)]
    pub auto_dedup: bool,
    /// Lazy migration (not supported).
    #[arg(long)]
    pub lazy_pages: bool,
}

/// `hull checkpoint`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    /// Where the checkpoint goes, and how.
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Let the container run on after the checkpoint.
    #[arg(long)]
    pub leave_running: bool,
    /// A previous pre-dump (not supported).
    #[arg(long)]
    pub parent_path: Option<PathBuf>,
    /// Only pre-dump memory (not supported).
    #[arg(long)]
    pub pre_dump: bool,
    /// Container id.
    pub id: String,
}

/// `hull restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Where the checkpoint is, and how.
    #[command(flatten)]
    pub criu: CriuArgs,
    /// The container's bundle, its network namespace, pid file and console socket as
    /// `create` takes them.
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Do not become the restored container's subreaper.
    #[arg(long)]
    pub no_subreaper: bool,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Save a running container to a directory (a vm pod's whole VM; a host container's
    /// processes through CRIU).
    Checkpoint(CheckpointArgs),
    /// Start a container from a checkpoint; wait for it unless detached.
    Restore(RestoreArgs),
    /// Create and start a container; wait for it unless detached.
    Run {
        /// Return once the container runs.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
        /// Create options.
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Print a container's state as OCI state JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container's state and resources.
    Delete {
        /// Kill the container first if it runs.
        #[arg(short, long)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Run a new process in a container.
    Exec(ExecArgs),
    /// A root shell (or CMD) in a vm container's pod guest, outside its containers; `--log`
    /// prints the guest's serial console.
    Console {
        /// Print the guest's serial console output (boot log included) instead.
        #[arg(long)]
        log: bool,
        /// Container id.
        id: String,
        /// Command and arguments (default: an interactive shell).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List a container's processes.
    Ps {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Container id.
        id: String,
        /// Options handed to ps(1) for the table format.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print container events (stats) as JSON lines.
    Events {
        /// Print stats once and exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats (e.g. 5s, 500ms).
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Container id.
        id: String,
    },
    /// Write a starting config.json.
    Spec {
        /// A spec for an unprivileged user.
        #[arg(long)]
        rootless: bool,
        /// Where to write config.json.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the OCI runtime-features document.
    Features,
    /// Say what this host can run (host and vm isolation) and why.
    Check,
    /// Serve a web page of this host's containers (runs hull-dashboard; see its --help).
    Dashboard {
        /// hull-dashboard's arguments (--listen ADDR, --token T, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The sandbox server of a vm container (started by `create`; not for people).
    #[command(hide = true)]
    SandboxServer {
        /// Container id.
        #[arg(long)]
        id: String,
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Console socket for a terminal.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// fd to report start-up on.
        #[arg(long)]
        ready_fd: i32,
        /// Start the pod from this checkpoint instead of booting (`hull restore`).
        #[arg(long)]
        restore: Option<PathBuf>,
    },
}

/// `hull exec`.
#[derive(Debug, Default, clap::Args)]
pub struct ExecArgs {
    /// Unix socket that receives the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment KEY=VALUE.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// uid[:gid] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// process.json describing the process.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the process pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (no SELinux here).
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility (no AppArmor here).
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privileges.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Pass N extra fds.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Exec even into a paused container (accepted; hull refuses paused).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Container id.
    pub id: String,
    /// Command and arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `hull update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// LinuxResources JSON file, `-` for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<i64>,
    /// Memory+swap limit in bytes.
    #[arg(long)]
    pub memory_swap: Option<i64>,
    /// Memory soft limit in bytes.
    #[arg(long)]
    pub memory_reservation: Option<i64>,
    /// CPU shares.
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPUs allowed.
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Max number of processes.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Container id.
    pub id: String,
}
