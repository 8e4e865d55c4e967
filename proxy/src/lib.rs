//! edgeplane-proxy: the edge. A pure routing core ([`route`], with the
//! subsetting [`balancer`]) and thin glue around it: Pingora
//! ([`service`], [`admin`], [`server`]), the health monitor ([`health`]),
//! background name resolution ([`names`]) and the DNS responder ([`dns`]).
//!
//! Start reading at [`route`] (what decides where a request goes), then
//! [`service`] (the Pingora `ProxyHttp` implementation that carries it
//! out), then [`server`] (how the process is put together).

pub mod access_log;
pub mod admin;
pub mod conn;
pub mod dns;
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod names;
pub mod pages;
pub mod reload;
pub mod server;
pub mod service;
pub mod status_page;
pub mod tls;
pub mod tunnel;

pub use edgeplane_core::{balancer, bits, route, ws_frames};
