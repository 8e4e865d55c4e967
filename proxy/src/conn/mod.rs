//! Client connections below HTTP: the accepted socket moved to the
//! serving thread's reactor ([`rebind`]), the PROXY protocol header from an L4
//! balancer ([`proxy_protocol`]), admission caps ([`admission`]), the
//! stream wrapper that adds a head deadline and a shutdown watch
//! ([`stream`]), the per-connection deadline every bounded wait uses
//! ([`deadline`]), and the TLS certificate store ([`tls`]).
//!
//! Where it sits: the request path's `EdgeApp` (in `http`) admits each connection and wraps it in a [`ConnStream`]; request hooks
//! reach it through `Downstream::conn` (`http/downstream.rs`). Start at [`stream`].

pub mod admission;
pub mod certs;
pub mod deadline;
pub mod drain;
pub mod proxy_protocol;
pub mod rebind;
pub mod stream;
pub mod tls;

pub use admission::{Admission, Refusal};
pub use drain::Drain;
pub use stream::ConnStream;
