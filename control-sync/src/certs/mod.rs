//! Certificates for custom domains in the control plane: sealing private
//! keys with the fleet key ([`seal`]), checking pairs before they are
//! stored ([`pem`]), the tables ([`store`]) and the fleet's one ACME issuer
//! ([`issuer`], run by `placectl certs run`).
//!
//! Flow: a hostname in `custom_domains` -> the issuer (holding the
//! PostgreSQL lease) orders it from the CA, publishes the challenge in
//! `acme_challenges` (every edge answers it), stores the issued chain and
//! the sealed key in `certificates` -> the delta stream tells every edge the
//! hostname's new revision -> an edge fetches the row on the first
//! handshake that needs it ([`store::fetch`]), opens the key with the same
//! fleet key and serves it. docs/certificates.md is the operator's view.
//! Start at [`issuer::Issuer::run`].

pub mod issuer;
pub mod metrics;
pub mod pem;
pub mod renewal_sim;
pub mod seal;
pub mod store;

pub use seal::{SealError, SealKey};
