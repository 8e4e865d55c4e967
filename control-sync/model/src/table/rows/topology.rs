//! Row upserts and deletes of the topology: regions, clusters and VMs
//! (the small, rarely changing part of the table), and the largest VM
//! capacity per region that the repl size check reads.
//!
//! Part of the one validation path of [`super`]: same [`Builder`], same
//! rules (a bad row is a [`RowError`] naming it); rings and balancer
//! candidates are only marked dirty here and rebuilt in `finish`.

use std::sync::Arc;

use super::*;

impl Builder {
    pub(super) fn delete_region(&mut self, name: String) -> Result<(), RowError> {
        self.row(0, &name);
        if let Some(i) = self.topo().by_region.remove(name.as_str()) {
            self.topo().regions[i as usize].present = false;
        }
        Ok(())
    }

    pub(super) fn delete_cluster(&mut self, name: String) -> Result<(), RowError> {
        self.max_capacity = None;
        self.row(1, &name);
        if let Some(i) = self.topo().by_cluster.remove(name.as_str()) {
            let c = &mut self.topo().clusters[i as usize];
            c.present = false;
            c.weight = 0;
            c.state = ClusterState::Draining;
            let region = c.region;
            self.dirty_regions.insert(region);
            self.dirty_clusters.insert(i);
        }
        Ok(())
    }

    pub(super) fn delete_vm(&mut self, id: String) -> Result<(), RowError> {
        self.row(2, &id);
        self.max_capacity = None;
        if let Some(i) = self.topo().by_vm.remove(id.as_str()) {
            let topo = self.topo();
            let vm = &mut topo.vms[i as usize];
            vm.present = false;
            vm.state = VmState::Down;
            let c = vm.cluster;
            topo.clusters[c as usize].vms.retain(|&v| v != i);
            self.dirty_clusters.insert(c);
        }
        Ok(())
    }

    pub(super) fn upsert_region(&mut self, r: RegionRow) -> Result<(), RowError> {
        self.max_capacity = None;
        let row = self.row(0, &r.name);
        row.check_id()?;
        let edge = row.endpoint("edge_addr", &r.edge_addr)?;
        let fresh = self.fresh;
        let topo = self.topo();
        let i = match topo.by_region.get(r.name.as_str()) {
            Some(_) if fresh => return Err(row.err(SkipReason::Duplicate, "duplicate region name")),
            Some(&i) => {
                topo.regions[i as usize].edge = edge;
                i
            }
            None => {
                let i = topo.regions.len() as Idx;
                topo.regions.push(Region {
                    name: r.name.as_str().into(),
                    edge,
                    present: true,
                });
                topo.by_region.insert(r.name.as_str().into(), i);
                topo.rings.push(Arc::new(Ring::empty()));
                i
            }
        };
        topo.regions[i as usize].present = true;
        if *self.table.local_region_name == *r.name {
            self.table.local_region = i;
        }
        Ok(())
    }

    pub(super) fn upsert_cluster(&mut self, c: ClusterRow) -> Result<(), RowError> {
        self.max_capacity = None;
        let row = self.row(1, &c.name);
        row.check_id()?;
        let region = row.lookup(&self.table.topo.by_region, "region", &c.region)?;
        if c.weight > MAX_CLUSTER_WEIGHT {
            return Err(row.err(
                SkipReason::BadValue,
                format!("weight {} is above {MAX_CLUSTER_WEIGHT}", c.weight),
            ));
        }
        let fresh = self.fresh;
        let topo = self.topo();
        let i = match topo.by_cluster.get(c.name.as_str()) {
            Some(_) if fresh => return Err(row.err(SkipReason::Duplicate, "duplicate cluster name")),
            Some(&i) => {
                let old = topo.clusters[i as usize].region;
                self.dirty_regions.insert(old);
                i
            }
            None => {
                let i = topo.clusters.len() as Idx;
                topo.clusters.push(Cluster {
                    name: c.name.as_str().into(),
                    region,
                    state: c.state,
                    weight: c.weight,
                    vms: Vec::new(),
                    present: true,
                });
                topo.by_cluster.insert(c.name.as_str().into(), i);
                i
            }
        };
        let topo = self.topo();
        let cl = &mut topo.clusters[i as usize];
        cl.region = region;
        cl.state = c.state;
        cl.weight = c.weight;
        cl.present = true;
        self.dirty_regions.insert(region);
        self.dirty_clusters.insert(i);
        Ok(())
    }

    pub(super) fn upsert_vm(&mut self, v: VmRow) -> Result<(), RowError> {
        let row = self.row(2, &v.id);
        row.check_id()?;
        let cluster = row.lookup(&self.table.topo.by_cluster, "cluster", &v.cluster)?;
        let endpoint = row.endpoint("addr", &v.addr)?;
        let metrics_addr = v
            .metrics_addr
            .as_deref()
            .map(|m| row.addr("metrics_addr", m))
            .transpose()?;
        if !(1..=MAX_VM_CAPACITY).contains(&v.capacity) {
            return Err(row.err(
                SkipReason::BadValue,
                format!("capacity {} is not between 1 and {MAX_VM_CAPACITY}", v.capacity),
            ));
        }
        self.max_capacity = None;
        let fresh = self.fresh;
        let topo = self.topo();
        let vm = Vm {
            id: v.id.as_str().into(),
            cluster,
            endpoint,
            metrics_addr,
            state: v.state,
            id_hash: key_hash(&v.id),
            capacity: v.capacity as u32,
            present: true,
        };
        match topo.by_vm.get(v.id.as_str()) {
            Some(_) if fresh => return Err(row.err(SkipReason::Duplicate, "duplicate vm id")),
            Some(&i) => {
                let old_cluster = topo.vms[i as usize].cluster;
                if old_cluster != cluster {
                    topo.clusters[old_cluster as usize].vms.retain(|&x| x != i);
                    topo.clusters[cluster as usize].vms.push(i);
                } else if !topo.vms[i as usize].present {
                    topo.clusters[cluster as usize].vms.push(i);
                }
                topo.vms[i as usize] = vm;
                self.dirty_clusters.insert(old_cluster);
            }
            None => {
                let i = topo.vms.len() as Idx;
                topo.vms.push(vm);
                topo.by_vm.insert(v.id.as_str().into(), i);
                topo.clusters[cluster as usize].vms.push(i);
                let load = Arc::make_mut(&mut self.table.load);
                load.containers.push(0);
                load.units.push(0);
            }
        }
        self.dirty_clusters.insert(cluster);
        Ok(())
    }

    /// The largest capacity of a VM of `region` (None: it has no VM).
    pub(super) fn largest_vm(&mut self, region: Idx) -> Option<u32> {
        let topo = &self.table.topo;
        let max = self.max_capacity.get_or_insert_with(|| {
            let mut max = vec![0u32; topo.regions.len()];
            for vm in topo.vms.iter().filter(|v| v.present) {
                let r = topo.clusters[vm.cluster as usize].region as usize;
                max[r] = max[r].max(vm.capacity);
            }
            max
        });
        max.get(region as usize).copied().filter(|&c| c > 0)
    }
}
