//! Shadow comparison: the primary source's table against the shadow
//! source's (the legacy Redis store during the migration), field by field,
//! so the platform team can see the stores agree before Redis is retired.
//!
//! Where it sits: the shadow source's sync loop calls [`ShadowState::record`]
//! with [`compare`]'s result after every round; the proxy mirrors the
//! totals into `edgeplane_shadow_mismatches_total{field}` and shows the
//! last comparison (with samples) at `/debug/shadow`.
//!
//! What is compared: every repl homed in this edge's region in either table,
//! by id, on what routing uses — `slug` (the hostname), `region` (affinity),
//! `vm` (the running container), `cluster` (where the edge sends it: the
//! VM's cluster when running, else the lazy-transfer target, the pinned
//! cluster or the ring's pick); a repl only one side has is `missing` (the
//! shadow lacks it) or `extra` (only the shadow has it). Then the VMs of the
//! region's clusters (`vm_addr`, `vm_state`; a VM only one side has counts
//! under `vm_addr`) and every region's `edge_addr`. Custom domains and
//! tombstones are not compared: the legacy store has none.
//!
//! [`compare`] is pure: no I/O, no clocks. Start there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::directory::Name;
use crate::table::{Repl, RoutingTable};

/// The `field` label values, in a fixed order.
pub const FIELDS: [&str; 9] = [
    "missing",
    "extra",
    "slug",
    "region",
    "cluster",
    "vm",
    "vm_addr",
    "vm_state",
    "edge_addr",
];

/// Mismatches kept as samples per comparison (and at most this many per
/// field), so `/debug/shadow` stays small however far the stores drift.
pub const MAX_SAMPLES: usize = 50;
const MAX_SAMPLES_PER_FIELD: usize = 10;

/// One difference: what each side says (`-` when it has no such row).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Repl id, VM id or region name.
    pub key: String,
    pub field: &'static str,
    pub primary: String,
    pub shadow: String,
}

/// The result of one comparison.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub primary_version: u64,
    pub shadow_version: u64,
    /// Repls looked at (the union of both sides' local repls).
    pub repls_compared: u64,
    /// Mismatches by field, in [`FIELDS`] order.
    pub counts: [u64; FIELDS.len()],
    pub samples: Vec<Mismatch>,
}

impl Comparison {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// The count for one field name.
    pub fn count(&self, field: &str) -> u64 {
        FIELDS.iter().position(|f| *f == field).map_or(0, |i| self.counts[i])
    }
    fn note(&mut self, key: &str, field: &'static str, primary: String, shadow: String) {
        let i = FIELDS.iter().position(|f| *f == field).expect("known field");
        self.counts[i] += 1;
        let of_field = self.samples.iter().filter(|m| m.field == field).count();
        if self.samples.len() < MAX_SAMPLES && of_field < MAX_SAMPLES_PER_FIELD {
            self.samples.push(Mismatch {
                key: key.to_string(),
                field,
                primary,
                shadow,
            });
        }
    }
}

/// Where the edge sends `r` (see the module docs), by cluster name.
fn routing_cluster<'t>(t: &'t RoutingTable, r: &Repl) -> Option<&'t str> {
    let c = match r.vm.get().and_then(|v| t.get_vm(v)) {
        Some(vm) => Some(vm.cluster),
        None => r
            .transfer_to
            .get()
            .or(r.cluster.get())
            .or_else(|| t.ring(r.region).lookup_hash(r.id_hash)),
    };
    c.map(|c| &*t.cluster(c).name)
}

fn vm_id<'t>(t: &'t RoutingTable, r: &Repl) -> Option<&'t str> {
    r.vm.get().and_then(|v| t.get_vm(v)).map(|v| &*v.id)
}

fn show(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

/// Compares `primary` with `shadow` for `primary`'s local region: its
/// repls (both ways), its VMs and every region's edge address.
pub fn compare(primary: &RoutingTable, shadow: &RoutingTable) -> Comparison {
    let mut c = Comparison {
        primary_version: primary.version(),
        shadow_version: shadow.version(),
        ..Comparison::default()
    };
    compare_repls(&mut c, primary, shadow);
    compare_vms(&mut c, primary, shadow);
    compare_regions(&mut c, primary, shadow);
    c
}

fn compare_repls(c: &mut Comparison, primary: &RoutingTable, shadow: &RoutingTable) {
    let region = primary.local_region_name();
    let is_local = |t: &RoutingTable, r: &Repl| &*t.region(r.region).name == region;

    for p in primary.repls().filter(|r| is_local(primary, r)) {
        c.repls_compared += 1;
        let id = p.id();
        let Some(s) = shadow.repl_by_id(id) else {
            // Held only as a directory name there: homed elsewhere.
            match shadow.home_region(Name::Slug(p.slug())) {
                Some(r) => c.note(id, "region", region.into(), shadow.region(r).name.to_string()),
                None => c.note(id, "missing", p.slug().into(), "-".into()),
            }
            continue;
        };
        if p.slug() != s.slug() {
            c.note(id, "slug", p.slug().into(), s.slug().into());
        }
        let (pr, sr) = (&*primary.region(p.region).name, &*shadow.region(s.region).name);
        if pr != sr {
            c.note(id, "region", pr.into(), sr.into());
        }
        let (pv, sv) = (vm_id(primary, p), vm_id(shadow, s));
        if pv != sv {
            c.note(id, "vm", show(pv), show(sv));
        }
        let (pc, sc) = (routing_cluster(primary, p), routing_cluster(shadow, s));
        if pc != sc {
            c.note(id, "cluster", show(pc), show(sc));
        }
    }
    for s in shadow.repls().filter(|r| is_local(shadow, r)) {
        match primary.repl_by_id(s.id()) {
            None => {
                c.repls_compared += 1;
                match primary.home_region(Name::Slug(s.slug())) {
                    Some(r) => c.note(s.id(), "region", primary.region(r).name.to_string(), region.into()),
                    None => c.note(s.id(), "extra", "-".into(), s.slug().into()),
                }
            }
            // Homed here only in the shadow: a region mismatch, counted above
            // when the primary holds the repl at all.
            Some(p) if !is_local(primary, p) => {
                c.repls_compared += 1;
                let pr = &*primary.region(p.region).name;
                c.note(s.id(), "region", pr.into(), region.into());
            }
            Some(_) => {}
        }
    }
}

fn compare_vms(c: &mut Comparison, primary: &RoutingTable, shadow: &RoutingTable) {
    let region = primary.local_region_name();
    // VMs of this region's clusters, on either side.
    let local_vms = |t: &RoutingTable| -> Vec<String> {
        t.vms()
            .filter(|(_, v)| v.present && &*t.region(t.cluster(v.cluster).region).name == region)
            .map(|(_, v)| v.id.to_string())
            .collect()
    };
    let mut ids = local_vms(primary);
    ids.extend(local_vms(shadow));
    ids.sort_unstable();
    ids.dedup();
    for id in &ids {
        let p = primary.vm_by_id(id).map(|i| primary.vm(i)).filter(|v| v.present);
        let s = shadow.vm_by_id(id).map(|i| shadow.vm(i)).filter(|v| v.present);
        match (p, s) {
            (Some(p), Some(s)) => {
                let (pa, sa) = (p.endpoint.to_string(), s.endpoint.to_string());
                if pa != sa {
                    c.note(id, "vm_addr", pa, sa);
                }
                if p.state != s.state {
                    c.note(id, "vm_state", format!("{:?}", p.state), format!("{:?}", s.state));
                }
            }
            (p, s) => c.note(
                id,
                "vm_addr",
                show(p.map(|v| v.endpoint.to_string()).as_deref()),
                show(s.map(|v| v.endpoint.to_string()).as_deref()),
            ),
        }
    }
}

fn compare_regions(c: &mut Comparison, primary: &RoutingTable, shadow: &RoutingTable) {
    for (_, pr) in primary.regions().filter(|(_, r)| r.present) {
        let s = shadow
            .region_by_name(&pr.name)
            .map(|i| shadow.region(i))
            .filter(|r| r.present);
        let (pa, sa) = (pr.edge.to_string(), s.map(|r| r.edge.to_string()));
        if sa.as_deref() != Some(pa.as_str()) {
            c.note(&pr.name, "edge_addr", pa, show(sa.as_deref()));
        }
    }
}

/// What an edge in shadow mode holds: the comparison state and the switch
/// choosing which source is served.
#[derive(Clone)]
pub struct ShadowControl {
    pub state: Arc<ShadowState>,
    pub switch: Arc<crate::switch::SourceSwitch>,
}

/// What the shadow has found so far: running totals by field (the
/// Prometheus counter) and the last comparison.
pub struct ShadowState {
    /// The shadow source's name (`"redis"`).
    pub source: &'static str,
    totals: [AtomicU64; FIELDS.len()],
    comparisons: AtomicU64,
    last: Mutex<Option<(u64, Comparison)>>,
}

impl ShadowState {
    pub fn new(source: &'static str) -> ShadowState {
        ShadowState {
            source,
            totals: Default::default(),
            comparisons: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Adds a comparison made at `at_ms` (unix ms) to the totals and keeps
    /// it as the latest; logs a summary whenever the differences change.
    pub fn record(&self, c: Comparison, at_ms: u64) {
        for (t, n) in self.totals.iter().zip(c.counts) {
            t.fetch_add(n, Ordering::Relaxed);
        }
        self.comparisons.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Logged when the picture changes, not every round while it holds.
        let changed = last.as_ref().is_none_or(|(_, l)| l.counts != c.counts);
        if changed && c.total() == 0 && last.is_some() {
            log::info!("placement: shadow {} agrees with the primary again", self.source);
        }
        if changed && c.total() > 0 {
            let by_field: Vec<String> = FIELDS
                .iter()
                .zip(c.counts)
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| format!("{f}={n}"))
                .collect();
            log::warn!(
                "placement: shadow {} disagrees with the primary on {} of {} repls' fields ({}); first: {:?}",
                self.source,
                c.total(),
                c.repls_compared,
                by_field.join(" "),
                c.samples.first()
            );
        }
        *last = Some((at_ms, c));
    }

    /// Mismatches counted so far, by field.
    pub fn totals(&self) -> [(&'static str, u64); FIELDS.len()] {
        std::array::from_fn(|i| (FIELDS[i], self.totals[i].load(Ordering::Relaxed)))
    }

    pub fn comparisons(&self) -> u64 {
        self.comparisons.load(Ordering::Relaxed)
    }

    /// The last comparison and when it was made (unix ms).
    pub fn last(&self) -> Option<(u64, Comparison)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;

    const WORLD: &str = r#"{
        "regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}, {"name": "s", "edge_addr": "127.0.0.1:2"}],
        "clusters": [{"name": "c1", "region": "r", "state": "active"}, {"name": "c2", "region": "r", "state": "active"},
                     {"name": "d", "region": "s", "state": "active"}],
        "vms": [{"id": "v1", "cluster": "c1", "addr": "127.0.0.1:11", "state": "active"},
                {"id": "v2", "cluster": "c2", "addr": "127.0.0.1:12", "state": "active"}],
        "repls": [{"id": "a", "slug": "app-a", "region": "r"},
                  {"id": "b", "slug": "app-b", "region": "r", "cluster": "c1"},
                  {"id": "c", "slug": "app-c", "region": "r"},
                  {"id": "z", "slug": "app-z", "region": "s"}],
        "containers": [{"repl_id": "a", "vm_id": "v1"}]}"#;

    fn table(edit: impl FnOnce(&mut Snapshot)) -> RoutingTable {
        let mut s: Snapshot = serde_json::from_str(WORLD).unwrap();
        edit(&mut s);
        RoutingTable::build(&s, "r", 1).unwrap()
    }

    #[test]
    fn agreeing_stores_have_no_mismatch() {
        let c = compare(&table(|_| {}), &table(|_| {}));
        assert_eq!(c.total(), 0, "{c:?}");
        assert_eq!(c.repls_compared, 3, "the three repls homed in r");
    }

    #[test]
    fn each_seeded_difference_is_counted_under_its_field() {
        let shadow = table(|s| {
            s.repls.retain(|r| r.id != "c"); // missing
            s.repls
                .push(serde_json::from_str(r#"{"id": "n", "slug": "new", "region": "r"}"#).unwrap()); // extra
            s.repls[0].slug = "renamed".into(); // slug of a
            s.containers[0].vm_id = "v2".into(); // vm (and so cluster) of a
            s.repls[1].cluster = Some("c2".into()); // cluster of b
            s.vms[1].addr = "127.0.0.1:99".into();
            s.regions[1].edge_addr = "127.0.0.1:3".into();
        });
        let c = compare(&table(|_| {}), &shadow);
        for (field, n) in [
            ("missing", 1),
            ("extra", 1),
            ("slug", 1),
            ("vm", 1),
            ("cluster", 2),
            ("vm_addr", 1),
            ("edge_addr", 1),
            ("region", 0),
            ("vm_state", 0),
        ] {
            assert_eq!(c.count(field), n, "{field}: {c:#?}");
        }
        let vm = c.samples.iter().find(|m| m.field == "vm").unwrap();
        assert_eq!(
            (vm.key.as_str(), vm.primary.as_str(), vm.shadow.as_str()),
            ("a", "v1", "v2")
        );
        let missing = c.samples.iter().find(|m| m.field == "missing").unwrap();
        assert_eq!((missing.key.as_str(), missing.shadow.as_str()), ("c", "-"));
    }

    #[test]
    fn a_repl_homed_elsewhere_in_the_shadow_is_a_region_mismatch() {
        let shadow = table(|s| s.repls[2].region = "s".into());
        let c = compare(&table(|_| {}), &shadow);
        assert_eq!(c.count("region"), 1, "{c:#?}");
        assert_eq!(c.count("missing"), 0);
        let primary = table(|s| s.repls[2].region = "s".into());
        let c = compare(&primary, &table(|_| {}));
        assert_eq!(c.count("region"), 1, "seen from the other side too: {c:#?}");
    }

    #[test]
    fn state_keeps_totals_and_the_last_comparison() {
        let st = ShadowState::new("redis");
        let shadow = table(|s| s.repls.retain(|r| r.id != "c"));
        st.record(compare(&table(|_| {}), &shadow), 10);
        st.record(compare(&table(|_| {}), &shadow), 20);
        assert_eq!(st.totals()[0], ("missing", 2), "a counter: every comparison adds");
        assert_eq!(st.comparisons(), 2);
        let (at, last) = st.last().unwrap();
        assert_eq!((at, last.count("missing")), (20, 1));
    }
}
