//! hull-net: pod networking for vm pods, Kata's "tcfilter" model. Its one job is carrying the
//! network a client set up in a pod's network namespace on the host (a veth from CNI, Docker or
//! Podman) into the pod's VM, and setting it up again inside the guest.
//!
//! - Host side: [`model::PodNetwork`] is what a scan of the pod's network namespace finds
//!   (interfaces with their MAC, MTU and addresses; routes; neighbours). For each interface a
//!   tap is made in that namespace and joined to it by tc mirred redirects both ways, so
//!   frames pass veth <-> tap untouched; the VM's virtio-net NIC sits on the tap.
//! - Guest side: the agent finds each NIC by the MAC the hypervisor gave it and gives it the
//!   interface's name, MAC, MTU, addresses, then the routes and neighbours.

pub mod model;

pub use model::{Interface, IpNet, Neighbour, PodNetwork, Route};
