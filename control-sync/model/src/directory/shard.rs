//! One shard of the world directory: a bucketized cuckoo hash table of
//! 8-byte entries (`fingerprint << 8 | region + 1`; 0 is an empty slot).
//!
//! Where it sits: [`super::Directory`] holds one [`Shard`] per shard index
//! and swaps a whole shard on a change (copy-on-write); this module is the
//! table inside one shard.
//!
//! Layout: buckets of [`SLOTS`] entries and a word of 8-bit tags, one
//! 64-byte cache line each. A fingerprint has two candidate buckets, both
//! computed from the fingerprint alone (so entries can move and shards can
//! grow without the names). A lookup loads both lines — independent loads
//! the CPU issues together — and finds the candidate slot of each from its
//! tag word in a few word operations: few enough instructions that the
//! lookups of many requests overlap their cache misses.
//! Inserts go to a free slot of either bucket, else evict along a
//! random walk (cuckoo); a shard that cannot place an entry grows by an
//! eighth and is rebuilt. Shards are built at about [`TARGET_LOAD`] full:
//! ~9.4 bytes per name.
//!
//! Invariant: at most one entry per fingerprint in a shard. Start at
//! [`find`] and [`build`].

use std::sync::Arc;

/// Entries per bucket: seven, beside one word of tags (one cache line).
pub const SLOTS: usize = 7;
/// Share of slots a built shard fills.
pub const TARGET_LOAD: f64 = 0.9;
/// Evictions tried before a shard grows.
const MAX_KICKS: usize = 500;

/// One cache line: a tag byte per slot (0: empty; else `0x80` | 7 bits of
/// the fingerprint) and the entries. The tags let a lookup find its
/// candidate slot with a few word operations instead of seven compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Bucket {
    tags: u64,
    slots: [u64; SLOTS],
}

const LO: u64 = 0x0001_0101_0101_0101;
const HI: u64 = 0x0080_8080_8080_8080;
const SEVEN: u64 = 0x7F7F_7F7F_7F7F_7F7F;

impl Bucket {
    fn tag(&self, i: usize) -> u8 {
        (self.tags >> (i * 8)) as u8
    }
    fn set(&mut self, i: usize, e: u64) {
        let t = if e == 0 { 0 } else { tag_of(fingerprint(e)) };
        self.tags = (self.tags & !(0xFF << (i * 8))) | ((t as u64) << (i * 8));
        self.slots[i] = e;
    }
    fn free_slot(&self) -> Option<usize> {
        (0..SLOTS).find(|&i| self.tag(i) == 0)
    }
    /// The slots whose tag is `tag`'s: the high bit of each matching byte
    /// (exact: no borrow crosses bytes).
    #[inline]
    fn candidates(&self, tag: u8) -> u64 {
        let x = self.tags ^ (tag as u64 * LO);
        let y = (x & SEVEN).wrapping_add(SEVEN);
        !(y | x | SEVEN) & HI
    }
    /// The entry of `fp` among this bucket's slots, comparing them all.
    fn lookup_all(&self, fp: u64) -> u64 {
        let mut found = 0;
        for &e in &self.slots {
            found |= e & (((e >> 8) == fp) as u64).wrapping_neg();
        }
        found
    }

    /// The entry in the slot of the lowest candidate bit of `m` if it is
    /// `fp`'s, else 0 (branch-free; `m` may be 0).
    #[inline]
    fn first(&self, m: u64, fp: u64) -> u64 {
        let i = ((m.trailing_zeros() / 8) as usize).min(SLOTS - 1);
        let e = self.slots[i];
        e & ((m != 0 && (e >> 8) == fp) as u64).wrapping_neg()
    }
}

/// A shard as published: immutable, shared by every table that has it.
pub type Shard = Arc<[Bucket]>;

#[inline]
pub fn fingerprint(e: u64) -> u64 {
    e >> 8
}

#[inline]
fn tag_of(fp: u64) -> u8 {
    0x80 | (fp >> 40) as u8 & 0x7F
}

/// Buckets a fingerprint's two candidates lie within: one 4 KiB page, so a
/// lookup costs one TLB entry and one DRAM row however the two fall.
const BLOCK: usize = 64;

/// The two candidate buckets of a fingerprint among `nb` buckets (`nb` is
/// a power of two below [`BLOCK`], or a multiple of it): the first by
/// multiply-shift, the second its XOR with a non-zero offset from the
/// fingerprint inside the same block; both come from the fingerprint alone,
/// so entries move without their names.
#[inline]
fn buckets_of(fp: u64, nb: usize) -> (usize, usize) {
    let b1 = (((fp & 0xFFFF_FFFF) * nb as u64) >> 32) as usize;
    // A non-zero offset below `span` (a power of two), by multiply-shift.
    let span = nb.min(BLOCK) as u64;
    let d = 1 + ((((fp >> 32) & 0xFFFF) * span.saturating_sub(1)) >> 16) as usize;
    let b2 = if span > 1 { b1 ^ d } else { b1 };
    (b1, b2)
}

/// Rounds a bucket count to what [`buckets_of`] needs.
fn round_buckets(n: usize) -> usize {
    if n == 0 {
        0
    } else if n < BLOCK {
        n.next_power_of_two()
    } else {
        n.div_ceil(BLOCK) * BLOCK
    }
}

/// The entry with fingerprint `fp`, or 0.
#[inline]
pub fn find(shard: &[Bucket], fp: u64) -> u64 {
    let nb = shard.len();
    if nb == 0 {
        return 0;
    }
    let (b1, b2) = buckets_of(fp, nb);
    let tag = tag_of(fp);
    let (x, y) = (&shard[b1], &shard[b2]);
    let (mx, my) = (x.candidates(tag), y.candidates(tag));
    if (mx & mx.wrapping_sub(1)) | (my & my.wrapping_sub(1)) != 0 {
        // Two tags of one bucket match (one lookup in ~20): compare all.
        return x.lookup_all(fp) | y.lookup_all(fp);
    }
    x.first(mx, fp) | y.first(my, fp)
}

/// Every entry of a shard (unordered).
pub fn entries(shard: &[Bucket]) -> impl Iterator<Item = u64> + '_ {
    shard
        .iter()
        .flat_map(|b| (0..SLOTS).filter(|&i| b.tag(i) != 0).map(|i| b.slots[i]))
}

/// Puts `e` (whose fingerprint is not in `buckets`) into a free slot,
/// evicting along a deterministic pseudo-random walk; returns the entry
/// left without a place when the walk gives up.
fn place(buckets: &mut [Bucket], mut e: u64) -> Result<(), u64> {
    let nb = buckets.len();
    if nb == 0 {
        return Err(e);
    }
    let free = |b: &mut Bucket, e: u64| match b.free_slot() {
        Some(i) => {
            b.set(i, e);
            true
        }
        None => false,
    };
    let (b1, b2) = buckets_of(fingerprint(e), nb);
    if free(&mut buckets[b1], e) || free(&mut buckets[b2], e) {
        return Ok(());
    }
    let mut rng = fingerprint(e) | 1;
    let mut b = if rng & 2 == 0 { b1 } else { b2 };
    for _ in 0..MAX_KICKS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let slot = (rng % SLOTS as u64) as usize;
        let evicted = buckets[b].slots[slot];
        buckets[b].set(slot, e);
        e = evicted;
        let (c1, c2) = buckets_of(fingerprint(e), nb);
        let alt = if c1 == b { c2 } else { c1 };
        if free(&mut buckets[alt], e) {
            return Ok(());
        }
        b = alt;
    }
    Err(e)
}

/// Buckets for `n` entries at [`TARGET_LOAD`].
fn buckets_for(n: usize) -> usize {
    round_buckets((n as f64 / (SLOTS as f64 * TARGET_LOAD)).ceil() as usize)
}

/// A shard holding `entries` (distinct fingerprints), grown until every
/// entry has a place.
pub fn build(entries: &[u64]) -> Shard {
    let mut nb = buckets_for(entries.len());
    'size: loop {
        let mut buckets = vec![Bucket::default(); nb];
        for &e in entries {
            if place(&mut buckets, e).is_err() {
                nb = round_buckets(nb + nb / 8 + 1);
                continue 'size;
            }
        }
        return buckets.into();
    }
}

/// The bucket and slot holding fingerprint `fp`.
fn slot_of(buckets: &[Bucket], fp: u64) -> Option<(usize, usize)> {
    if buckets.is_empty() {
        return None;
    }
    let (b1, b2) = buckets_of(fp, buckets.len());
    [b1, b2].into_iter().find_map(|b| {
        (0..SLOTS)
            .find(|&i| buckets[b].tag(i) != 0 && fingerprint(buckets[b].slots[i]) == fp)
            .map(|i| (b, i))
    })
}

/// `shard` with `e` in it (replacing the entry of its fingerprint, if any).
pub fn with(shard: &[Bucket], e: u64) -> Shard {
    let mut buckets = shard.to_vec();
    if let Some((b, i)) = slot_of(&buckets, fingerprint(e)) {
        buckets[b].set(i, e);
        return buckets.into();
    }
    match place(&mut buckets, e) {
        Ok(()) => buckets.into(),
        Err(_) => {
            let mut all: Vec<u64> = entries(shard).collect();
            all.push(e);
            build(&all)
        }
    }
}

/// `shard` without the entry of fingerprint `fp`, or None when it has none.
pub fn without(shard: &[Bucket], fp: u64) -> Option<Shard> {
    let (b, i) = slot_of(shard, fp)?;
    let mut buckets = shard.to_vec();
    buckets[b].set(i, 0);
    Some(buckets.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(fp: u64, region: u8) -> u64 {
        (fp << 8) | (region as u64 + 1)
    }

    #[test]
    fn tags_pick_exactly_the_matching_slots() {
        let mut b = Bucket::default();
        for (i, fp) in [0x11u64 << 40, 0x22 << 40, 0x11 << 40 | 5].into_iter().enumerate() {
            b.set(i, (fp << 8) | 1);
        }
        assert_eq!(b.candidates(tag_of(0x11 << 40)), 0x80 | 0x80 << 16);
        assert_eq!(b.candidates(tag_of(0x22 << 40)), 0x80 << 8);
        assert_eq!(b.candidates(tag_of(0x33 << 40)), 0);
        assert!(
            (0..1u64 << 8).all(|x| tag_of(x << 40) & 0x80 != 0),
            "a lookup tag never matches an empty slot"
        );
        assert_eq!(b.lookup_all(0x11 << 40 | 5), ((0x11 << 40 | 5) << 8) | 1);
        let m = b.candidates(tag_of(0x22 << 40));
        assert_eq!(b.first(m, 0x22 << 40), ((0x22 << 40) << 8) | 1);
        assert_eq!(b.first(m, 0x22 << 40 | 1), 0, "same tag, other fingerprint");
        assert_eq!(b.first(0, 0), 0, "no candidate");
    }

    #[test]
    fn the_second_bucket_is_another_in_the_same_block() {
        for nb in [1usize, 2, 4, 32, 64, 128, 704] {
            for fp in (0..2000u64).map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 8) {
                let (b1, b2) = buckets_of(fp, nb);
                assert!(b1 < nb && b2 < nb, "{nb}");
                assert_eq!(b1 / BLOCK, b2 / BLOCK, "same block");
                if nb == 1 {
                    continue;
                }
                assert_ne!(b1, b2);
                // Both depend on the fingerprint only: an entry in either
                // knows the other without its name.
                assert_eq!(buckets_of(fp, nb), (b1, b2));
            }
        }
    }

    #[test]
    fn builds_full_shards_and_finds_every_entry() {
        let fps: Vec<u64> = (1..=5000u64)
            .map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 8)
            .collect();
        let all: Vec<u64> = fps.iter().map(|&f| e(f, (f % 7) as u8)).collect();
        let s = build(&all);
        let slots = s.len() * SLOTS;
        assert!(all.len() as f64 / slots as f64 > 0.7, "load {} of {slots}", all.len());
        for (&f, &x) in fps.iter().zip(&all) {
            assert_eq!(find(&s, f), x);
        }
        assert_eq!(find(&s, 12345), 0);
        assert_eq!(entries(&s).count(), all.len());
    }

    #[test]
    fn changes_copy_and_grow() {
        let mut s = build(&[]);
        assert_eq!(find(&s, 1), 0);
        for f in 1..=300u64 {
            s = with(&s, e(f * 0x9E37_79B9, 1));
        }
        let before = s.clone();
        let s2 = with(&s, e(5 * 0x9E37_79B9, 2));
        assert_eq!(find(&s2, 5 * 0x9E37_79B9), e(5 * 0x9E37_79B9, 2), "replaced");
        assert_eq!(
            find(&before, 5 * 0x9E37_79B9),
            e(5 * 0x9E37_79B9, 1),
            "the old copy is untouched"
        );
        let s3 = without(&s2, 7 * 0x9E37_79B9).unwrap();
        assert_eq!(find(&s3, 7 * 0x9E37_79B9), 0);
        assert!(without(&s3, 7 * 0x9E37_79B9).is_none());
        assert_eq!(entries(&s3).count(), 299);
    }
}
