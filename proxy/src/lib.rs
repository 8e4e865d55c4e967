//! edgeplane-proxy: the edge. A pure routing core ([`route`]) and thin
//! Pingora glue around it.
//!
//! Start reading at [`route`] (what decides where a request goes), then
//! `service` (the Pingora `ProxyHttp` implementation that carries it out).

pub mod route;
