//! A persistent (copy-on-write) hash map split into shards, so that a table
//! of millions of rows can be changed one row at a time and republished
//! without copying it.
//!
//! Where it sits: the routing table keeps repls, custom domains and
//! tombstones in [`ShardedMap`]s and the repl-id index in a [`HashIndex`]. A published table is never
//! mutated: applying a delta clones the table (cheap: a few `Arc`s), and the
//! first write to a shard copies that shard only (`Arc::make_mut`), plus the
//! top-level array of shard pointers once per delta batch. Readers holding
//! the old table keep seeing the old shards.
//!
//! Layout: `shards: Arc<[Arc<HashTable<V>>]>`, the count chosen at build
//! time from the expected size (~[`ROWS_PER_SHARD`] rows each); rows live in
//! the tables' buckets, so a lookup is shard pointer, control group, row.
//!
//! Hashing: one 64-bit foldhash per key with a per-process random seed
//! (hash-flooding resistant; nothing here needs to agree across edges). Bits
//! 16..48 pick the shard by multiply-shift; hashbrown uses the low bits and
//! the top 7, so shard selection does not starve its SIMD tag bytes.
//!
//! Invariants: `len` is the sum of shard lengths; keys are unique. Start at
//! [`ShardedMap::get`] and [`ShardedMap::insert`].

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

/// Rows stored in a [`ShardedMap`] know their key.
pub trait Keyed {
    fn key(&self) -> &str;
}

/// Target rows per shard when sizing a new map. A trade: a delta copies
/// whole shards (~1,400 repls: ~70 KB, microseconds on the sync thread),
/// while every lookup pays for reaching its shard; smaller shards measured
/// slower (256 rows: 313 ns per hosted-app decision over 1M repls).
pub const ROWS_PER_SHARD: usize = 1400;

/// Shard of a hash: bits 16..48 reduced to `0..n` by multiply-shift (n need
/// not be a power of two). hashbrown uses the low bits (bucket) and the top
/// 7 (tag), so shard selection does not correlate with either.
#[inline]
fn shard_index(h: u64, n: usize) -> usize {
    ((((h >> 16) & 0xFFFF_FFFF) * n as u64) >> 32) as usize
}

/// How many shards, and the capacity to pre-size each with, for `expected`
/// rows: shards hold ~[`ROWS_PER_SHARD`] rows so that, with 12% headroom
/// for the spread of a hash, a shard's table sits about 70% full (rows live
/// in the table's buckets, so its load factor is memory per row).
fn layout(expected: usize) -> (usize, usize) {
    let n = (expected / ROWS_PER_SHARD).clamp(16, 1 << 16);
    let per_shard = if expected >= n {
        expected / n + expected / n * 12 / 100 + 8
    } else {
        0
    };
    (n, per_shard)
}

/// See the module docs.
pub struct ShardedMap<V> {
    hasher: foldhash::fast::RandomState,
    shards: Arc<[Arc<HashTable<V>>]>,
    len: usize,
}

impl<V> Clone for ShardedMap<V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher,
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V: Keyed + Clone> ShardedMap<V> {
    /// An empty map sized for about `expected` rows (pre-sized, so a full
    /// load does not grow tables by doubling).
    pub fn with_expected(expected: usize) -> ShardedMap<V> {
        let (n, per_shard) = layout(expected);
        ShardedMap {
            hasher: Default::default(),
            shards: (0..n).map(|_| Arc::new(HashTable::with_capacity(per_shard))).collect(),
            len: 0,
        }
    }

    /// The map's hash of a key (stable for this map and its clones).
    #[inline]
    pub fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_hashed(self.hash(key), |v| v.key() == key)
    }

    /// The row with map hash `h` for which `is` holds (for secondary
    /// indexes that store a hash instead of the key).
    #[inline]
    pub fn get_hashed(&self, h: u64, is: impl Fn(&V) -> bool) -> Option<&V> {
        self.shards[shard_index(h, self.shards.len())].find(h, is)
    }

    /// Writable access to the shard of `h`, copying it (and the shard array)
    /// first if a published table still shares them.
    fn shard_mut(&mut self, h: u64) -> &mut HashTable<V> {
        let s = shard_index(h, self.shards.len());
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        let shards = Arc::get_mut(&mut self.shards).expect("unique after copy");
        Arc::make_mut(&mut shards[s])
    }

    /// Changes the row with map hash `h` for which `is` holds, in place
    /// (copying its shard first if shared). `f` must not change the key.
    /// Returns whether a row was found.
    pub fn update_hashed(&mut self, h: u64, is: impl Fn(&V) -> bool, f: impl FnOnce(&mut V)) -> bool {
        if self.get_hashed(h, &is).is_none() {
            return false;
        }
        match self.shard_mut(h).find_mut(h, is) {
            Some(v) => {
                f(v);
                true
            }
            None => false,
        }
    }

    /// Inserts or replaces the row with `v`'s key; returns the old row.
    pub fn insert(&mut self, v: V) -> Option<V> {
        let h = self.hash(v.key());
        let hasher = self.hasher;
        let shard = self.shard_mut(h);
        if let Some(old) = shard.find_mut(h, |x| x.key() == v.key()) {
            return Some(std::mem::replace(old, v));
        }
        shard.insert_unique(h, v, |x| hasher.hash_one(x.key()));
        self.len += 1;
        None
    }

    /// Removes the row with `key`; returns it.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let h = self.hash(key);
        // Do not copy a shard for a key that is not there.
        self.get_hashed(h, |v| v.key() == key)?;
        let (old, _) = self.shard_mut(h).find_entry(h, |v| v.key() == key).ok()?.remove();
        self.len -= 1;
        Some(old)
    }

    /// All rows, shard by shard (unordered).
    pub fn iter(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Releases spare capacity (after a full load).
    pub fn shrink_to_fit(&mut self) {
        let hasher = self.hasher;
        let shards = Arc::get_mut(&mut self.shards).expect("shrink only an unshared map");
        for s in shards.iter_mut() {
            Arc::get_mut(s)
                .expect("shrink only an unshared map")
                .shrink_to_fit(|x| hasher.hash_one(x.key()));
        }
    }

    /// Bytes held by the shards' tables (not counting heap data inside rows).
    pub fn approx_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.capacity() * (std::mem::size_of::<V>() + 1))
            .sum::<usize>()
            + self.shards.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Row(String, u32);
    impl Keyed for Row {
        fn key(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut m = ShardedMap::with_expected(10_000);
        for i in 0..10_000 {
            assert_eq!(m.insert(Row(format!("k{i}"), i)), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get("k42"), Some(&Row("k42".into(), 42)));
        assert_eq!(m.insert(Row("k42".into(), 7)), Some(Row("k42".into(), 42)));
        assert_eq!(m.len(), 10_000);
        for i in (0..10_000).step_by(3) {
            assert!(m.remove(&format!("k{i}")).is_some(), "k{i}");
        }
        assert_eq!(m.remove("k0"), None);
        for i in 0..10_000 {
            let got = m.get(&format!("k{i}"));
            assert_eq!(got.is_some(), i % 3 != 0, "k{i}");
        }
        assert_eq!(m.iter().count(), m.len());
    }

    #[test]
    fn clones_are_isolated_and_share_untouched_shards() {
        let mut a = ShardedMap::with_expected(100_000);
        for i in 0..100_000 {
            a.insert(Row(format!("k{i}"), i));
        }
        let snapshot = a.clone();
        let mut b = a.clone();
        b.insert(Row("k1".into(), 999));
        b.remove("k2");
        b.insert(Row("new".into(), 1));
        // The published copy never changes.
        assert_eq!(snapshot.get("k1").unwrap().1, 1);
        assert!(snapshot.get("k2").is_some() && snapshot.get("new").is_none());
        assert_eq!(b.get("k1").unwrap().1, 999);
        assert!(b.get("k2").is_none() && b.get("new").is_some());
        // At most three shards were copied; the rest are shared.
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= a.shards.len() - 3, "{shared} of {} shared", a.shards.len());
    }

    #[test]
    fn removal_keeps_moved_rows_findable() {
        // Many rows in few shards: removals exercise the swap-remove repointing.
        let mut m = ShardedMap::with_expected(0);
        for i in 0..5_000 {
            m.insert(Row(format!("x{i}"), i));
        }
        for i in 0..5_000 {
            if i % 2 == 0 {
                m.remove(&format!("x{i}"));
            }
            for j in (i + 1..5_000).step_by(499) {
                assert_eq!(m.get(&format!("x{j}")).map(|r| r.1), Some(j));
            }
        }
        assert_eq!(m.len(), 2_500);
    }
}

/// A copy-on-write multimap of 64-bit hash pairs `(key hash, value)`,
/// sharded like [`ShardedMap`]: a secondary index that stores no strings.
/// Lookups return candidate values; the caller verifies them against the
/// row they point to (so hash collisions cost a comparison, never a wrong
/// answer).
/// One shard of a [`HashIndex`]: (key hash, value) pairs.
type PairShard = HashTable<(u64, u64)>;

#[derive(Clone)]
pub struct HashIndex {
    shards: Arc<[Arc<PairShard>]>,
    len: usize,
}

impl HashIndex {
    pub fn with_expected(expected: usize) -> HashIndex {
        let (n, per_shard) = layout(expected);
        HashIndex {
            shards: (0..n).map(|_| Arc::new(HashTable::with_capacity(per_shard))).collect(),
            len: 0,
        }
    }

    #[inline]
    fn shard_of(&self, h: u64) -> usize {
        shard_index(h, self.shards.len())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values stored under key hash `h`.
    #[inline]
    pub fn candidates(&self, h: u64) -> impl Iterator<Item = u64> + '_ {
        self.shards[self.shard_of(h)]
            .iter_hash(h)
            .filter(move |(k, _)| *k == h)
            .map(|(_, v)| *v)
    }

    fn shard_mut(&mut self, h: u64) -> &mut PairShard {
        let s = self.shard_of(h);
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        Arc::make_mut(&mut Arc::get_mut(&mut self.shards).expect("unique after copy")[s])
    }

    /// Adds the pair (no-op if present).
    pub fn insert(&mut self, h: u64, v: u64) {
        if self.candidates(h).any(|x| x == v) {
            return;
        }
        self.shard_mut(h).insert_unique(h, (h, v), |&(k, _)| k);
        self.len += 1;
    }

    /// Removes the pair; returns whether it was there.
    pub fn remove(&mut self, h: u64, v: u64) -> bool {
        if !self.candidates(h).any(|x| x == v) {
            return false;
        }
        if let Ok(e) = self.shard_mut(h).find_entry(h, |&(k, x)| k == h && x == v) {
            e.remove();
            self.len -= 1;
            return true;
        }
        false
    }

    pub fn shrink_to_fit(&mut self) {
        if let Some(shards) = Arc::get_mut(&mut self.shards) {
            for s in shards.iter_mut() {
                if let Some(s) = Arc::get_mut(s) {
                    s.shrink_to_fit(|&(k, _)| k);
                }
            }
        }
    }

    pub fn approx_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.capacity() * 17).sum::<usize>() + self.shards.len() * 64
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn pairs_with_colliding_keys() {
        let mut ix = HashIndex::with_expected(1000);
        ix.insert(7, 1);
        ix.insert(7, 2);
        ix.insert(7, 2);
        ix.insert(8, 3);
        let mut c: Vec<u64> = ix.candidates(7).collect();
        c.sort();
        assert_eq!(c, vec![1, 2]);
        assert_eq!(ix.len(), 3);
        let snapshot = ix.clone();
        assert!(ix.remove(7, 1));
        assert!(!ix.remove(7, 1));
        assert_eq!(ix.candidates(7).collect::<Vec<_>>(), vec![2]);
        assert_eq!(snapshot.candidates(7).count(), 2, "clones are isolated");
    }
}
