//! Small bit tools shared by the core and the glue.

/// The SplitMix64 finaliser: spreads every input bit over all 64 output
/// bits, cheaply. Used wherever a well-spread value is needed from a
/// counter or a hash (tie-breaks, per-thread entropy, slot choice).
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}
