//! `containerd-shim-hull-v2`: started by containerd for `--runtime io.containerd.hull.v2`.

fn main() {
    // One malloc arena for all threads. glibc gives each thread that allocates an arena of
    // its own; ttrpc's handler threads, the IO copiers and the event thread made ~10 in every
    // shim, each with pages resident for its few small allocations.
    // SAFETY: mallopt only sets a glibc tunable; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if std::env::args().nth(1).as_deref() == Some(hull_container::spawn::HELPER_VERB) {
        hull_shim::logging::init(false);
        hull_container::spawn::helper_main();
    }
    let config = containerd_shim::Config {
        // hull reaps by pid (see reaper.rs); the crate's waitpid(-1) would steal exits.
        no_reaper: true,
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<hull_shim::shim::HullShim>(hull_shim::RUNTIME_ID, Some(config));
}
