//! Work the edge does off the request path, each on a thread of its own:
//! the health monitor ([`health`]: scrapes VMs or asks Prometheus, and
//! rebuilds the balancer's view) and background name resolution
//! ([`names`]: the answers the routing decision dials). Requests only read
//! what these publish (one atomic load each); nothing here is ever waited on.

pub mod health;
pub mod names;
