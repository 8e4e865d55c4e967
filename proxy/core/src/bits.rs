//! Small bit tools shared by the core and the glue: a hash finaliser, and
//! the two number-to-text writers the request path runs per request (the
//! client's address in `x-forwarded-for`, the hex fields of a request id)
//! without `core::fmt`, which costs about 1,000 instructions for an IPv4
//! address where these take a few dozen (bench/results/h1-own/).

/// The SplitMix64 finaliser: spreads every input bit over all 64 output
/// bits, cheaply. Used wherever a well-spread value is needed from a
/// counter or a hash (tie-breaks, per-thread entropy, slot choice).
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `n` in lower-case hex without leading zeros (`0` for zero), as
/// `format!("{n:x}")` writes it: the end of `buf`.
#[inline]
pub fn hex(n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Appends `n` in decimal.
#[inline]
fn push_u8(out: &mut impl Extend<u8>, n: u8) {
    let (h, t, o) = (n / 100, n / 10 % 10, n % 10);
    if h > 0 {
        out.extend([b'0' + h, b'0' + t, b'0' + o]);
    } else if t > 0 {
        out.extend([b'0' + t, b'0' + o]);
    } else {
        out.extend([b'0' + o]);
    }
}

/// Appends an IPv4 address in dotted decimal, as its `Display` writes it.
#[inline]
pub fn push_ipv4(out: &mut impl Extend<u8>, octets: [u8; 4]) {
    push_u8(out, octets[0]);
    for o in &octets[1..] {
        out.extend([b'.']);
        push_u8(out, *o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_what_format_writes() {
        for n in [0u64, 1, 9, 10, 15, 16, 255, 0x1234_abcd, u64::MAX, 1 << 63, 0x0f0f] {
            let mut buf = [0; 16];
            assert_eq!(hex(n, &mut buf), format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn every_octet_and_some_addresses_are_what_display_writes() {
        for o in 0..=255u8 {
            let a = std::net::Ipv4Addr::new(o, 255 - o, o / 2, o.wrapping_mul(7));
            let mut v = Vec::new();
            push_ipv4(&mut v, a.octets());
            assert_eq!(String::from_utf8(v).unwrap(), a.to_string());
        }
    }
}
