//! edgeplane-proxy: the edge. A pure routing core ([`route`]) and thin
//! Pingora glue around it ([`service`], [`admin`], [`server`]).
//!
//! Start reading at [`route`] (what decides where a request goes), then
//! [`service`] (the Pingora `ProxyHttp` implementation that carries it
//! out), then [`server`] (how the process is put together).

pub mod admin;
pub mod metrics;
pub mod pages;
pub mod route;
pub mod server;
pub mod service;
