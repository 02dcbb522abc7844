//! The host side: what is in a pod's network namespace ([`scan`]), the taps that carry it to
//! the VM ([`attach_tap`], [`detach_tap`]), and namespaces hull makes itself
//! ([`create_netns`], [`remove_netns`]). Every function takes the namespace as a path and does
//! its work on a short-lived thread inside it.

mod netns;
mod scan;
mod tap;
mod tc;

pub use netns::{create_netns, remove_netns};
pub use scan::scan;
pub use tap::{attach_tap, detach_tap, tap_name};
