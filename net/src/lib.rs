//! hull-net: pod networking for vm pods, Kata's "tcfilter" model. Its one job is carrying the
//! network a client set up in a pod's network namespace on the host (a veth from CNI, Docker or
//! Podman) into the pod's VM, and setting it up again inside the guest.
//!
//! - Host side ([`host`]): [`scan`] finds what is in the pod's network namespace (interfaces
//!   with their MAC, MTU and addresses; routes; neighbours). For each interface
//!   [`attach_tap`] makes a tap in that namespace and joins it to the interface by tc mirred
//!   redirects both ways, so frames pass veth <-> tap untouched; the VM's virtio-net NIC sits
//!   on the tap. [`detach_tap`] undoes it.
//! - Guest side ([`guest`]): [`configure`] finds each NIC by the MAC the hypervisor gave it
//!   and gives it the interface's name, MAC, MTU and addresses, then the routes and
//!   neighbours.
//!
//! Everything goes through rtnetlink ([`netlink`]), synchronously; work in another network
//! namespace runs on a short-lived thread that joined it, so no caller's thread moves.

pub mod error;
pub mod guest;
pub mod host;
pub mod model;
pub mod netlink;

pub use error::{NetError, Result};
pub use guest::{configure, configure_in, ipv6_enabled};
pub use host::{attach_tap, create_netns, detach_tap, remove_netns, scan, tap_name};
pub use model::{Interface, IpNet, Neighbour, PodNetwork, Route};
