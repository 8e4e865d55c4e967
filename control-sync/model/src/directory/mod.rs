//! The world directory: every other region's apps, by slug and by custom
//! domain, mapped to their home region — and nothing more. It is what lets
//! an edge forward a request for an app homed anywhere in the world once,
//! to the right region, without holding that app's row.
//!
//! Where it sits: inside the [`crate::table::RoutingTable`], beside the
//! local repls. Routing looks a host up in the local table first (exact,
//! string-compared rows); only a miss there asks the directory, whose
//! answer is a region to forward to, never a VM. Full loads fill it through
//! [`DirectoryBuilder`]; deltas change it with [`Directory::set`] and
//! [`Directory::remove`], copying one shard (copy-on-write, like the
//! table's other maps).
//!
//! Layout and cost (the target is at most 16 bytes per foreign app):
//! - A name is hashed with XXH3-128 under a seed drawn at random for each
//!   directory (never shown outside the edge, so nobody can aim a name at
//!   another's hash). The top `shard_bits` bits pick a shard (a full load
//!   sizes them for about [`NAMES_PER_SHARD`] names a shard; a directory
//!   keeps its count for life); the next 56 bits are the name's
//!   fingerprint. Slugs and custom domains hash under different seeds, so
//!   `app` the slug and `app` the domain never meet.
//! - A shard ([`shard`]) is a bucketized cuckoo table of 8-byte entries
//!   `fingerprint << 8 | region + 1`, 7 and a tag word per cache line, ~90%
//!   full: ~11 bytes per name. A lookup is the hash, the shard's pointer
//!   (the pointer array stays in cache) and two cache lines of one page
//!   loaded together, the candidate slot found from the tags without a
//!   branch on the data, so the lookups of concurrent requests overlap
//!   their misses.
//!
//! Exactness: names are not stored, so a lookup can match another name with
//! the same shard and fingerprint (`shard_bits` + 56 bits: 68 at 10M apps). That is safe by construction:
//! the directory only ever says "forward to region R", the home edge then
//! looks the name up exactly in its own table, and a request that arrives
//! with a verified hop header is never forwarded by affinity again — so a
//! false match costs one 404 (or 508) at the home edge, never a wrong VM,
//! never a loop. The odds: a host that is no app matches with probability
//! n / 2^68 (4e-14 at 10M apps); two apps of a world share 68 bits with
//! probability n² / 2^69 (1.5e-7 per full load at 10M apps). A full load
//! notices such a pair (equal fingerprints in one shard) and counts it;
//! when their regions differ one of the two apps is forwarded to the wrong
//! region (a 508 there) until the next full load draws a new seed.
//!
//! Start at [`Directory::get`] and [`DirectoryBuilder`].

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_128_with_seed;

mod moves;
pub mod shard;

pub use moves::{RecentMoves, MAX_RECENT_MOVES};

use shard::{Bucket, Shard};

/// Shard bits of a directory that starts empty (256 shards).
pub const MIN_SHARD_BITS: u32 = 8;
/// Most shard bits (a million shards).
pub const MAX_SHARD_BITS: u32 = 20;
/// Names per shard a full load sizes for: a delta copies one shard (~40
/// KB), the shard pointer array of a 10M-name world (4,096 shards, 64 KB)
/// stays in the CPU's cache, and a shard's bucket count rounds up to its
/// 64-bucket blocks with little waste.
pub const NAMES_PER_SHARD: usize = 4096;
/// Regions a directory can name: region indexes `0..MAX_REGIONS`.
pub const MAX_REGIONS: usize = 255;
/// Version of the serialised form ([`DirectoryDump`]).
pub const DUMP_FORMAT: u32 = 1;

const FP_BITS: u32 = 56;
/// Mixed into the key for custom domains (a different hash family).
const DOMAIN_KEY_TWEAK: u64 = 0x646f_6d61_696e_7321;

/// A name the directory knows an app by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'a> {
    /// `<slug>.<suffix>`: the slug alone, lower case.
    Slug(&'a str),
    /// A custom domain: canonical host (lower case, no port, no final dot).
    Domain(&'a str),
}

/// The same, owned (a change row carries one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedName {
    Slug(String),
    Domain(String),
}

impl OwnedName {
    pub fn as_name(&self) -> Name<'_> {
        match self {
            OwnedName::Slug(s) => Name::Slug(s),
            OwnedName::Domain(d) => Name::Domain(d),
        }
    }
}

/// The two seeded hash functions of one directory, and its shard bits.
#[derive(Clone, Copy)]
struct Hashers {
    key: (u64, u64),
    shard_bits: u32,
    slug_seed: u64,
    domain_seed: u64,
}

impl Hashers {
    fn new(key: (u64, u64), shard_bits: u32) -> Hashers {
        let seed = key.0 ^ key.1.rotate_left(32);
        Hashers {
            key,
            shard_bits,
            slug_seed: seed,
            domain_seed: seed ^ DOMAIN_KEY_TWEAK,
        }
    }

    fn shards(&self) -> usize {
        1 << self.shard_bits
    }

    /// (shard, fingerprint) of a name.
    #[inline]
    fn locate(&self, name: Name<'_>) -> (usize, u64) {
        let h = match name {
            Name::Slug(s) => xxh3_128_with_seed(s.as_bytes(), self.slug_seed),
            Name::Domain(d) => xxh3_128_with_seed(d.as_bytes(), self.domain_seed),
        };
        // (shard_bits is 8 to 20: the shifts below never reach 0 or 64.)
        let (hi, lo) = ((h >> 64) as u64, h as u64);
        let shard = (hi >> (64 - self.shard_bits)) as usize;
        let fp = ((hi << self.shard_bits) | (lo >> (64 - self.shard_bits))) >> (64 - FP_BITS);
        (shard, fp)
    }
}

/// A random key from std's randomly keyed hasher (seeded by the OS once
/// per thread, stepped on every use): a directory's hash seed is unknown
/// outside it, so nobody can craft names that collide in it. The key
/// changes where names sit, never what a lookup answers, so this is the
/// one randomness the pure crate draws itself.
pub fn random_key() -> (u64, u64) {
    use std::hash::BuildHasher;
    let mut out = [0u64; 2];
    for (i, o) in out.iter_mut().enumerate() {
        *o = std::collections::hash_map::RandomState::new().hash_one(i);
    }
    (out[0], out[1])
}

#[inline]
fn entry(fp: u64, region: u8) -> u64 {
    (fp << 8) | (region as u64 + 1)
}

#[inline]
fn region_of(e: u64) -> u8 {
    ((e & 0xFF) - 1) as u8
}

/// See the module docs. Cloning shares every shard.
#[derive(Clone)]
pub struct Directory {
    hashers: Hashers,
    shards: Arc<[Shard]>,
    len: usize,
}

impl Default for Directory {
    fn default() -> Self {
        Directory::empty(random_key())
    }
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// An empty directory hashing with `key`.
    pub fn empty(key: (u64, u64)) -> Directory {
        Self::with_shard_bits(key, MIN_SHARD_BITS)
    }

    fn with_shard_bits(key: (u64, u64), shard_bits: u32) -> Directory {
        let hashers = Hashers::new(key, shard_bits);
        let none: Shard = Arc::from(Vec::<Bucket>::new());
        Directory {
            shards: (0..hashers.shards()).map(|_| none.clone()).collect(),
            hashers,
            len: 0,
        }
    }

    /// Names held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The home region (an index of the table's regions) of `name`.
    #[inline]
    pub fn get(&self, name: Name<'_>) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let (shard, fp) = self.hashers.locate(name);
        let e = shard::find(&self.shards[shard], fp);
        (e != 0).then(|| region_of(e))
    }

    /// Sets `name`'s home region (a delta: copies one shard). Regions at or
    /// past [`MAX_REGIONS`] cannot be held: returns false.
    pub fn set(&mut self, name: Name<'_>, region: usize) -> bool {
        if region >= MAX_REGIONS {
            return false;
        }
        let (i, fp) = self.hashers.locate(name);
        let e = entry(fp, region as u8);
        let old = shard::find(&self.shards[i], fp);
        if old == e {
            return true;
        }
        let next = shard::with(&self.shards[i], e);
        if old == 0 {
            self.len += 1;
        }
        self.shard_slots()[i] = next;
        true
    }

    /// Forgets `name` (a delta: copies one shard when it was there).
    pub fn remove(&mut self, name: Name<'_>) -> bool {
        let (i, fp) = self.hashers.locate(name);
        let Some(next) = shard::without(&self.shards[i], fp) else {
            return false;
        };
        self.shard_slots()[i] = next;
        self.len -= 1;
        true
    }

    /// The shard array, copied first if a published table shares it.
    fn shard_slots(&mut self) -> &mut [Shard] {
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        Arc::get_mut(&mut self.shards).expect("just made unique")
    }

    /// Bytes held: entries, shard headers and the shard array.
    pub fn approx_bytes(&self) -> usize {
        let buckets: usize = self
            .shards
            .iter()
            .map(|s| s.len() * std::mem::size_of::<Bucket>())
            .sum();
        // Each shard's allocation carries its reference counts (padded to
        // a cache line), and the array holds a fat pointer per shard.
        buckets + self.shards.len() * (64 + 16)
    }

    /// Renumbers regions by `map` (old index -> new index), for a file read
    /// back into a table whose region order differs. Entries whose region
    /// maps to None are dropped; returns how many.
    fn remap(&mut self, map: &[Option<usize>]) -> usize {
        let mut dropped = 0;
        let mut len = 0;
        let shards: Vec<Shard> = self
            .shards
            .iter()
            .map(|s| {
                let kept: Vec<u64> = shard::entries(s)
                    .filter_map(|e| match map.get(region_of(e) as usize).copied().flatten() {
                        Some(r) if r < MAX_REGIONS => Some(entry(e >> 8, r as u8)),
                        _ => {
                            dropped += 1;
                            None
                        }
                    })
                    .collect();
                len += kept.len();
                shard::build(&kept)
            })
            .collect();
        self.shards = shards.into();
        self.len = len;
        dropped
    }

    /// Every (region, count) pair, for `/debug/snapshot`.
    pub fn per_region(&self) -> Vec<(u8, usize)> {
        let mut counts = [0usize; 256];
        for s in self.shards.iter() {
            for e in shard::entries(s) {
                counts[region_of(e) as usize] += 1;
            }
        }
        counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(r, &n)| (r as u8, n))
            .collect()
    }

    /// The serialised form, with `region_names[i]` the name of region `i`.
    pub fn dump<'a>(&'a self, region_names: Vec<String>) -> DirectoryDumpRef<'a> {
        DirectoryDumpRef {
            dir: self,
            region_names,
        }
    }

    /// Reads a dump back for a table whose regions are looked up by
    /// `region_index`. Returns the directory and how many entries named a
    /// region the table does not have (dropped).
    pub fn from_dump(
        d: &DirectoryDump,
        region_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<(Directory, usize), String> {
        use base64::Engine;
        if d.format != DUMP_FORMAT || !(MIN_SHARD_BITS..=MAX_SHARD_BITS).contains(&d.shard_bits) {
            return Err(format!(
                "directory format {} with {} shard bits is not this build's ({DUMP_FORMAT}, \
                 {MIN_SHARD_BITS} to {MAX_SHARD_BITS} shard bits)",
                d.format, d.shard_bits
            ));
        }
        let key = u128::from_str_radix(&d.key, 16).map_err(|e| format!("directory key: {e}"))?;
        let mut dir = Directory::with_shard_bits(((key >> 64) as u64, key as u64), d.shard_bits);
        let count = dir.shards.len();
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut shards: Vec<Shard> = dir.shards.to_vec();
        let mut len = 0;
        for (i, text) in &d.shards {
            let i = *i;
            if i >= count {
                return Err(format!("directory shard {i} is out of range"));
            }
            let bytes = engine.decode(text).map_err(|e| format!("directory shard {i}: {e}"))?;
            if bytes.len() % 8 != 0 {
                return Err(format!("directory shard {i}: not a whole number of entries"));
            }
            let mut v: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            if v.iter().any(|&e| e & 0xFF == 0) {
                return Err(format!("directory shard {i}: an entry names no region"));
            }
            v.sort_unstable();
            v.dedup_by_key(|e| *e >> 8);
            len += v.len();
            shards[i] = shard::build(&v);
        }
        dir.shards = shards.into();
        dir.len = len;
        let map: Vec<Option<usize>> = d.regions.iter().map(|r| region_index(r)).collect();
        let dropped = dir.remap(&map);
        Ok((dir, dropped))
    }
}

/// The directory as a snapshot file holds it (last-known-good files and
/// `edgeplane snapshot dump`): the hash key and the non-empty shards, each
/// `[index, base64]` with the base64 (standard, unpadded) of its
/// little-endian entries; `regions` names the region of each index the
/// entries use. Names are not in it — the directory never had them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryDump {
    pub format: u32,
    pub shard_bits: u32,
    /// The 128-bit hash key, 32 hex digits.
    pub key: String,
    pub entries: usize,
    pub regions: Vec<String>,
    pub shards: Vec<(usize, String)>,
}

/// Serialises a [`Directory`] as a [`DirectoryDump`], one shard at a time.
pub struct DirectoryDumpRef<'a> {
    dir: &'a Directory,
    region_names: Vec<String>,
}

impl DirectoryDumpRef<'_> {
    /// An owned dump (holds every shard's text at once).
    pub fn to_owned_dump(&self) -> DirectoryDump {
        DirectoryDump {
            format: DUMP_FORMAT,
            shard_bits: self.dir.hashers.shard_bits,
            key: self.key_hex(),
            entries: self.dir.len,
            regions: self.region_names.clone(),
            shards: self
                .dir
                .shards
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .map(|(i, s)| (i, shard_text(s)))
                .collect(),
        }
    }

    fn key_hex(&self) -> String {
        let (a, b) = self.dir.hashers.key;
        format!("{:032x}", ((a as u128) << 64) | b as u128)
    }
}

fn shard_text(s: &[Bucket]) -> String {
    use base64::Engine;
    let mut entries: Vec<u64> = shard::entries(s).collect();
    entries.sort_unstable();
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

impl serde::Serialize for DirectoryDumpRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Shards<'a>(&'a [Shard]);
        impl serde::Serialize for Shards<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(
                    self.0
                        .iter()
                        .enumerate()
                        .filter(|(_, sh)| !sh.is_empty())
                        .map(|(i, sh)| (i, shard_text(sh))),
                )
            }
        }
        let mut st = s.serialize_struct("DirectoryDump", 6)?;
        st.serialize_field("format", &DUMP_FORMAT)?;
        st.serialize_field("shard_bits", &self.dir.hashers.shard_bits)?;
        st.serialize_field("key", &self.key_hex())?;
        st.serialize_field("entries", &self.dir.len)?;
        st.serialize_field("regions", &self.region_names)?;
        st.serialize_field("shards", &Shards(&self.dir.shards))?;
        st.end()
    }
}

/// What a full load's names looked like once sorted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// Names pushed.
    pub pushed: usize,
    /// Pairs of names with the same 68 bits: held once.
    pub collisions: usize,
    /// Of those, pairs whose regions differ (one of the two is misrouted
    /// until a full load draws a new key).
    pub conflicts: usize,
}

/// Collects a full load's names, then builds each shard once.
///
/// Names are kept in two flat arrays (shard index, entry) rather than a
/// vector per shard: they are a few large allocations the allocator hands
/// back to the system whole once the directory is built, instead of
/// thousands of small ones that would leave the heap fragmented (measured:
/// bench/results/world.md).
pub struct DirectoryBuilder {
    hashers: Hashers,
    shard_of: Vec<u32>,
    entries: Vec<u64>,
    pushed: usize,
    /// Entries came from a file first: equal fingerprints are the same name
    /// again (the later one wins), not collisions.
    seeded: bool,
}

impl DirectoryBuilder {
    /// A builder with a fresh random key, sized for about `expected` names.
    pub fn new(expected: usize) -> DirectoryBuilder {
        Self::with_key(random_key(), expected)
    }

    pub fn with_key(key: (u64, u64), expected: usize) -> DirectoryBuilder {
        let bits = (expected / NAMES_PER_SHARD)
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_SHARD_BITS, MAX_SHARD_BITS);
        DirectoryBuilder {
            hashers: Hashers::new(key, bits),
            shard_of: Vec::with_capacity(expected),
            entries: Vec::with_capacity(expected),
            pushed: 0,
            seeded: false,
        }
    }

    /// A builder holding `dir`'s entries (and its key): names pushed on top
    /// of a directory read back from a file. A pushed name that is already
    /// there replaces it.
    pub fn seeded(dir: Directory) -> DirectoryBuilder {
        let mut b = DirectoryBuilder {
            hashers: dir.hashers,
            shard_of: Vec::with_capacity(dir.len),
            entries: Vec::with_capacity(dir.len),
            pushed: 0,
            seeded: true,
        };
        for (i, s) in dir.shards.iter().enumerate() {
            for e in shard::entries(s) {
                b.shard_of.push(i as u32);
                b.entries.push(e);
            }
        }
        b
    }

    /// Adds a name; false (and nothing added) when `region` is at or past
    /// [`MAX_REGIONS`].
    pub fn push(&mut self, name: Name<'_>, region: usize) -> bool {
        if region >= MAX_REGIONS {
            return false;
        }
        let (shard, fp) = self.hashers.locate(name);
        self.shard_of.push(shard as u32);
        self.entries.push(entry(fp, region as u8));
        self.pushed += 1;
        true
    }

    /// Groups the names by shard (a counting sort), then builds each shard.
    pub fn finish(self) -> (Directory, BuildReport) {
        let mut report = BuildReport {
            pushed: self.pushed,
            ..Default::default()
        };
        let count = self.hashers.shards();
        let mut starts = vec![0usize; count + 1];
        for &s in &self.shard_of {
            starts[s as usize + 1] += 1;
        }
        for i in 0..count {
            starts[i + 1] += starts[i];
        }
        let mut grouped = vec![0u64; self.entries.len()];
        let mut next = starts.clone();
        // In push order within a shard (the seeded rule needs it).
        for (&s, &e) in self.shard_of.iter().zip(&self.entries) {
            grouped[next[s as usize]] = e;
            next[s as usize] += 1;
        }
        drop((self.shard_of, self.entries));
        let mut len = 0;
        let shards: Vec<Shard> = (0..count)
            .map(|i| {
                let v = &mut grouped[starts[i]..starts[i + 1]];
                let kept = if self.seeded {
                    // Stable by fingerprint only: pushed entries follow the
                    // file's, and the last of equals is kept.
                    v.sort_by_key(|e| e >> 8);
                    v.reverse();
                    let mut w: Vec<u64> = v.to_vec();
                    w.dedup_by(|later, kept| (*later >> 8) == (*kept >> 8));
                    w
                } else {
                    v.sort_unstable();
                    let mut w: Vec<u64> = v.to_vec();
                    w.dedup_by(|later, kept| {
                        let same = (*later >> 8) == (*kept >> 8);
                        if same {
                            report.collisions += 1;
                            if *later != *kept {
                                report.conflicts += 1;
                            }
                        }
                        same
                    });
                    w
                };
                len += kept.len();
                shard::build(&kept)
            })
            .collect();
        let dir = Directory {
            hashers: self.hashers,
            shards: shards.into(),
            len,
        };
        (dir, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn built(names: &[(&str, usize)]) -> Directory {
        let mut b = DirectoryBuilder::with_key((1, 2), names.len());
        for &(n, r) in names {
            assert!(b.push(Name::Slug(n), r));
        }
        b.finish().0
    }

    #[test]
    fn finds_what_was_built_and_nothing_else() {
        let names: Vec<(String, usize)> = (0..50_000).map(|i| (format!("app-{i}"), i % 7)).collect();
        let refs: Vec<(&str, usize)> = names.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let d = built(&refs);
        assert_eq!(d.len(), 50_000);
        for (n, r) in &names {
            assert_eq!(d.get(Name::Slug(n)), Some(*r as u8), "{n}");
            assert_eq!(d.get(Name::Domain(n)), None, "a slug is not a domain");
        }
        for i in 0..50_000 {
            assert_eq!(d.get(Name::Slug(&format!("nope-{i}"))), None);
        }
        assert_eq!(d.shards.len(), 256, "the fewest shards a directory has");
    }

    #[test]
    fn a_big_directory_costs_about_eleven_bytes_a_name() {
        let n = 2_000_000;
        let mut b = DirectoryBuilder::with_key((3, 4), n);
        let mut name = String::new();
        for i in 0..n {
            use std::fmt::Write;
            name.clear();
            let _ = write!(name, "app{i}");
            b.push(Name::Slug(&name), i % 5);
        }
        let (d, _) = b.finish();
        let per_name = d.approx_bytes() as f64 / d.len() as f64;
        assert!(per_name < 11.5, "{per_name:.2} bytes a name");
        assert_eq!(d.get(Name::Slug("app1234567")), Some((1_234_567 % 5) as u8));
    }

    #[test]
    fn deltas_copy_on_write_and_leave_the_published_copy_alone() {
        let d = built(&[("a", 1), ("b", 2)]);
        let mut next = d.clone();
        assert!(next.set(Name::Slug("c"), 3));
        assert!(next.set(Name::Slug("a"), 4), "a region change");
        assert!(next.remove(Name::Slug("b")));
        assert!(!next.remove(Name::Slug("b")), "already gone");
        assert!(next.set(Name::Domain("www.example.com"), 0));
        assert_eq!(
            (
                next.get(Name::Slug("a")),
                next.get(Name::Slug("b")),
                next.get(Name::Slug("c"))
            ),
            (Some(4), None, Some(3))
        );
        assert_eq!(next.get(Name::Domain("www.example.com")), Some(0));
        assert_eq!(next.len(), 3);
        assert_eq!(
            (d.get(Name::Slug("a")), d.get(Name::Slug("b")), d.get(Name::Slug("c"))),
            (Some(1), Some(2), None),
            "the old copy is untouched"
        );
        assert!(!next.set(Name::Slug("x"), MAX_REGIONS), "region index out of range");
    }

    #[test]
    fn a_dump_reads_back_with_regions_renumbered() {
        let mut d = built(&[("a", 0), ("b", 1), ("c", 2)]);
        d.set(Name::Domain("a.example.com"), 2);
        let text = serde_json::to_string(&d.dump(vec!["x".into(), "y".into(), "z".into()])).unwrap();
        let back: DirectoryDump = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d.dump(vec!["x".into(), "y".into(), "z".into()]).to_owned_dump());
        // The reading table has z first and no y.
        let (r, dropped) = Directory::from_dump(&back, |n| match n {
            "z" => Some(0),
            "x" => Some(1),
            _ => None,
        })
        .unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(r.get(Name::Slug("a")), Some(1));
        assert_eq!(r.get(Name::Slug("b")), None);
        assert_eq!(r.get(Name::Slug("c")), Some(0));
        assert_eq!(r.get(Name::Domain("a.example.com")), Some(0));
        let mut bad = back.clone();
        bad.shard_bits = 30;
        assert!(Directory::from_dump(&bad, |_| Some(0)).is_err());
        let mut bad = back;
        bad.shards[0].1 = "!!".into();
        assert!(Directory::from_dump(&bad, |_| Some(0)).is_err());
    }

    #[test]
    fn a_build_counts_names_that_share_their_bits() {
        // The same name twice stands in for two names with equal hashes.
        let mut b = DirectoryBuilder::with_key((5, 6), 4);
        b.push(Name::Slug("twin"), 1);
        b.push(Name::Slug("twin"), 1);
        b.push(Name::Slug("rival"), 1);
        b.push(Name::Slug("rival"), 2);
        let (d, report) = b.finish();
        assert_eq!(
            report,
            BuildReport {
                pushed: 4,
                collisions: 2,
                conflicts: 1
            }
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d.get(Name::Slug("twin")), Some(1));
        assert!(matches!(d.get(Name::Slug("rival")), Some(1 | 2)));
    }

    #[test]
    fn keys_differ_between_directories() {
        assert_ne!(random_key(), random_key());
    }

    proptest! {
        /// Any sequence of sets and removes leaves the directory agreeing
        /// with a plain map, whatever the shard contents look like.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u8..3, 0u16..400, 0usize..5), 1..400)) {
            let mut d = Directory::empty((9, 9));
            let mut m = std::collections::HashMap::new();
            for (op, k, r) in ops {
                let name = format!("n{k}");
                match op {
                    0 | 1 => {
                        d.set(Name::Slug(&name), r);
                        m.insert(name, r as u8);
                    }
                    _ => {
                        prop_assert_eq!(d.remove(Name::Slug(&name)), m.remove(&name).is_some());
                    }
                }
            }
            prop_assert_eq!(d.len(), m.len());
            for k in 0u16..400 {
                let name = format!("n{k}");
                prop_assert_eq!(d.get(Name::Slug(&name)), m.get(&name).copied());
            }
        }

    }
}
