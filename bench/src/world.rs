//! Synthetic placement worlds for benchmarks and load runs: N repls over R
//! regions and C clusters, with a share of them running.
//!
//! Deterministic (no randomness): repl `i` is `r<i>` with slug `app<i>`,
//! homed in region `i % R`. Start at [`synthetic`].

use edgeplane_control_sync::snapshot::*;

/// Shape of a synthetic world.
#[derive(Debug, Clone, Copy)]
pub struct WorldShape {
    pub repls: usize,
    pub regions: usize,
    pub clusters: usize,
    pub vms_per_cluster: usize,
    /// One repl in `running_every` has a container.
    pub running_every: usize,
}

impl Default for WorldShape {
    fn default() -> Self {
        WorldShape {
            repls: 1_000_000,
            regions: 3,
            clusters: 50,
            vms_per_cluster: 20,
            running_every: 4,
        }
    }
}

/// Region `i` is named `region-<i>`; its edge listens on `127.0.0.1:<8080+i>`.
pub fn region_name(i: usize) -> String {
    format!("region-{i}")
}

/// Builds the snapshot; VMs point at `vm_addr(vm_index)`.
pub fn synthetic(shape: WorldShape, vm_addr: impl Fn(usize) -> String) -> Snapshot {
    let mut s = Snapshot::default();
    for r in 0..shape.regions {
        s.regions.push(RegionRow {
            name: region_name(r),
            edge_addr: format!("127.0.0.1:{}", 8080 + r),
        });
    }
    let mut vm_index = 0;
    for c in 0..shape.clusters {
        let name = format!("cluster-{c}");
        s.clusters.push(ClusterRow {
            name: name.clone(),
            region: region_name(c % shape.regions),
            state: ClusterState::Active,
            weight: DEFAULT_CLUSTER_WEIGHT,
        });
        for v in 0..shape.vms_per_cluster {
            s.vms.push(VmRow {
                id: format!("vm-{c}-{v}"),
                cluster: name.clone(),
                addr: vm_addr(vm_index),
                metrics_addr: None,
                state: VmState::Active,
                capacity: 100,
            });
            vm_index += 1;
        }
    }
    for i in 0..shape.repls {
        let region = i % shape.regions;
        s.repls.push(ReplRow {
            id: format!("r{i}"),
            slug: format!("app{i}"),
            owner: None,
            region: region_name(region),
            cluster: None,
            transfer_to: None,
            size: 1,
        });
        if shape.running_every > 0 && i % shape.running_every == 0 {
            // A VM of a cluster in the repl's region.
            let cluster = (i / shape.regions % (shape.clusters / shape.regions).max(1)) * shape.regions + region;
            let cluster = cluster.min(shape.clusters - 1);
            s.containers.push(ContainerRow {
                repl_id: format!("r{i}"),
                vm_id: format!("vm-{cluster}-{}", i % shape.vms_per_cluster),
                started_at: None,
            });
        }
    }
    s
}
