//! `containerd-shim-hull-v2`: started by containerd for `--runtime io.containerd.hull.v2`.

fn main() {
    if std::env::args().nth(1).as_deref() == Some(hull_shim::spawn::HELPER_VERB) {
        hull_shim::spawn::helper_main();
    }
    let config = containerd_shim::Config {
        // hull reaps by pid (see reaper.rs); the crate's waitpid(-1) would steal exits.
        no_reaper: true,
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<hull_shim::shim::HullShim>(hull_shim::RUNTIME_ID, Some(config));
}
