//! [`Shared`]: the handles the request path ([`crate::http::Proxy`]) and
//! the admin API ([`crate::admin::AdminApp`]) both hold — the running
//! config and route context (each swapped whole by a reload), the placement
//! table, resolved names, metrics and the recent forwards. Built once by
//! [`crate::server::Parts`]; cloning shares them.

use std::sync::Arc;

use arc_swap::ArcSwap;

use edgeplane_config::Config;
use edgeplane_control_sync::TableHandle;

use crate::background::names::Names;
use crate::http::RecentForwards;
use crate::metrics::Metrics;
use crate::route::RouteContext;

/// See the module docs.
#[derive(Clone)]
pub struct Shared {
    pub cfg: Arc<ArcSwap<Config>>,
    pub route: Arc<ArcSwap<RouteContext>>,
    pub table: TableHandle,
    /// Answers for VM and peer-edge endpoints given as names.
    pub names: Arc<Names>,
    pub metrics: Arc<Metrics>,
    /// The latest forwards, for the status page.
    pub recent_forwards: Arc<RecentForwards>,
}
