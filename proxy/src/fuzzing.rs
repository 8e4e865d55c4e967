//! The properties the fuzz targets check, one function per target. Both
//! the cargo-fuzz targets under `proxy/fuzz/` (run by hand or nightly, see
//! docs/reliability.md) and the normal test suite (which replays the
//! committed corpus in `proxy/fuzz/corpus/<target>/`) call these, so a
//! crash found once stays a regression test.
//!
//! Each function takes arbitrary bytes, feeds them to the parser the edge
//! exposes to the internet or to the control plane, and panics if a
//! property breaks. Panics inside the parsers are the first thing found;
//! the properties below catch the quieter bugs:
//! - [`host`]: canonical hosts are canonical (idempotent, lower-case,
//!   bounded, plain characters) and case never changes the answer.
//! - [`token`]: any input verifies safely; a minted workspace token (v1
//!   and v2) or hop header verifies, and any one-byte change to it never does.
//! - [`snapshot`]: any JSON that decodes as a snapshot builds a table
//!   without panicking, and that table survives the last-known-good round
//!   trip row for row.
//! - [`change_row`]: any PostgreSQL change row decodes or is refused.
//! - [`h1_request`]: the HTTP/1.1 codec reads any bytes the same in any
//!   pieces, never takes a request with two framings, and a request it
//!   takes, written again plainly, reads back as the same request.

use edgeplane_control_sync::postgres::decode::decode;
use edgeplane_control_sync::table::Strictness;
use edgeplane_control_sync::{RoutingTable, Snapshot};

use crate::route::host::{canonical_host, slug_of, MAX_HOST_LEN};
use crate::route::signing::{sign_hop, verify_hop};
use crate::route::{Refusal, TokenVersion, Verifier};
use edgeplane_token::{Claims, Refused, SecretKey};

/// One fuzz target: takes any bytes, panics if a property breaks.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `cargo fuzz run <name>` and the corpus
/// directories spell them.
pub const TARGETS: [(&str, Target); 5] = [
    ("host", host),
    ("token", token),
    ("snapshot", snapshot),
    ("change_row", change_row),
    ("h1_request", h1_request),
];

/// Host canonicalisation (`route::host`).
pub fn host(data: &[u8]) {
    let got = canonical_host(data).map(|h| h.as_str().to_string());
    let upper = canonical_host(&data.to_ascii_uppercase()).map(|h| h.as_str().to_string());
    assert_eq!(got, upper, "case changed the answer for {data:?}");
    let Ok(h) = got else { return };
    assert!(!h.is_empty() && h.len() <= MAX_HOST_LEN, "{h:?}");
    assert!(!h.ends_with('.') && !h.contains(".."), "{h:?}");
    assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{h:?}");
    if let Some(ip) = h.strip_prefix('[') {
        let ip = ip.strip_suffix(']').expect("brackets close");
        assert!(ip.parse::<std::net::Ipv6Addr>().is_ok(), "{h:?} is no IPv6 literal");
    } else {
        assert!(
            h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            "{h:?} from {data:?}"
        );
    }
    let again = canonical_host(h.as_bytes()).map(|x| x.as_str().to_string());
    assert_eq!(again.as_deref(), Ok(h.as_str()), "not idempotent");
    let suffixes = ["repl.co".to_string(), "example.com".to_string()];
    if let Some(slug) = slug_of(&h, &suffixes) {
        assert!(!slug.is_empty() && !slug.contains('.'), "{slug:?} of {h:?}");
        assert!(suffixes.iter().any(|s| h == format!("{slug}.{s}")), "{slug:?} of {h:?}");
    }
}

/// A secret key for the fuzz target only (it signs nothing anywhere else).
const FUZZ_SECRET: &str =
    "k4.secret.X5YAivw83xbwJutXja6H796H6DSDA4vkN7zRSmL_FSVCJGuyuZ_gRcGJJhgJhhkw23SZ_bc11tASk2qxRyoUEA";

/// Workspace tokens (`edgeplane-token`, both versions) and hop headers
/// (`route::signing`).
pub fn token(data: &[u8]) {
    const KEY: &[u8] = b"fuzz-key-0123456789abcdef";
    let secret = SecretKey::from_paserk(FUZZ_SECRET).expect("the fuzz key reads");
    let verifier = Verifier::new(vec![secret.public_key().clone()], Some(KEY.to_vec()));
    let text = String::from_utf8_lossy(data);
    // Arbitrary input: never a panic, and never valid unless it is byte
    // for byte a token minted with the key (Ed25519 and HMAC are both
    // deterministic, so minting its claims again gives the same text).
    if let Ok(s) = verifier.verify(Some(&text), "r1", 1_000) {
        let again = match s.version {
            TokenVersion::V1 => v1_exp(&text).map(|exp| edgeplane_token::v1::mint(KEY, "r1", exp)),
            TokenVersion::V2 => None,
        };
        assert_eq!(Some(text.as_ref()), again.as_deref(), "accepted a token nobody minted");
    }
    let _ = verify_hop(KEY, data, 1_000, "app1.repl.co");

    // Minted values verify; every one-byte change is refused.
    let Some((&pos, rest)) = data.split_first() else { return };
    let repl = String::from_utf8_lossy(rest);
    let exp = 2_000;
    let minted = [
        edgeplane_token::v1::mint(KEY, &repl, exp),
        edgeplane_token::mint(
            &secret,
            &Claims {
                repl: &repl,
                region: "us-east1",
                cluster: None,
                expires_at: exp,
            },
        )
        .unwrap_or_default(),
    ];
    for t in minted.iter().filter(|t| !t.is_empty()) {
        if t.len() > edgeplane_token::MAX_TOKEN_BYTES {
            // Refused unread, whatever it holds.
            let r = verifier.verify(Some(t), &repl, exp - 1).map_err(|r| r.why);
            assert_eq!(r.err(), Some(Refusal::Malformed), "a {}-byte token", t.len());
            continue;
        }
        assert!(verifier.verify(Some(t), &repl, exp - 1).is_ok(), "{t}");
        let why = |r: Result<_, Refused>| r.map_err(|r| r.why).err();
        assert_eq!(why(verifier.verify(Some(t), &repl, exp)), Some(Refusal::Expired));
        assert_eq!(
            why(verifier.verify(Some(t), &format!("{repl}x"), 1)),
            Some(Refusal::WrongRepl)
        );
        let mut bad = t.clone().into_bytes();
        let i = pos as usize % bad.len();
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("tokens are ASCII");
        assert!(
            verifier.verify(Some(&bad), &repl, 1).is_err(),
            "changed byte {i} of {t} still verified"
        );
    }

    // Origins are region names (never empty, no `;`); hop counts start at 1.
    let region = match repl.replace(';', "") {
        r if r.is_empty() => "r".to_string(),
        r => r,
    };
    let h = sign_hop(KEY, &region, 1 + pos % 4, 1_000, "app1.repl.co");
    assert!(verify_hop(KEY, h.as_bytes(), 1_000, "app1.repl.co").is_some(), "{h}");
    let mut bad = h.clone().into_bytes();
    let i = pos as usize % bad.len();
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    assert!(
        verify_hop(KEY, &bad, 1_000, "app1.repl.co").is_none(),
        "changed byte {i} of {h} still verified"
    );
}

/// The `exp` of a v1 token's payload, if it decodes.
fn v1_exp(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split_once('.')?.0)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&payload).ok()?["exp"].as_u64()
}

/// Snapshot decoding and table building (`control-sync`): the file source,
/// `placectl import` and last-known-good all start here.
pub fn snapshot(data: &[u8]) {
    let Ok(snap) = serde_json::from_slice::<Snapshot>(data) else {
        return;
    };
    let _ = RoutingTable::build(&snap, "us-east1", 1);
    let Ok((table, _skipped)) = RoutingTable::build_with(&snap, "us-east1", 7, Strictness::Lenient) else {
        return;
    };
    for r in &snap.repls {
        let _ = table.repl_by_slug(&r.slug);
        let _ = table.repl_by_id(&r.id);
    }
    for d in &snap.custom_domains {
        let _ = table.repl_by_domain(&d.hostname);
    }
    // The last-known-good round trip keeps every row.
    let mut json = Vec::new();
    table.write_json(&mut json).expect("a table serialises");
    let back: Snapshot = serde_json::from_slice(&json).expect("written JSON reads back");
    let (again, skipped) = RoutingTable::build_with(&back, "us-east1", back.version.max(1), Strictness::Lenient)
        .expect("a written table builds");
    assert!(skipped.is_empty(), "rows of a valid table were skipped: {skipped:?}");
    assert_eq!(again.counts(), table.counts());
    assert_eq!(again.to_snapshot(), table.to_snapshot());
}

/// PostgreSQL change rows (`control-sync::postgres::decode`). Input: table,
/// op, row and old row separated by NUL bytes.
pub fn change_row(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let tbl = parts.next().unwrap_or("");
    let op = parts.next().unwrap_or("");
    let row = parts.next();
    let old = parts.next();
    let _ = decode(1, tbl, op, row, old);
}

/// The HTTP/1.1 codec's reading of a client's bytes
/// (`http::h1::offline`). Input: two bytes of read sizes, then the bytes.
pub fn h1_request(data: &[u8]) {
    use crate::http::h1::offline::{first_request, Reading};
    let (sizes, bytes) = data.split_at(data.len().min(2));
    let reads: Vec<usize> = sizes.iter().map(|&b| usize::from(b % 64) + 1).collect();
    let whole = first_request(bytes, &[]);
    let pieces = first_request(bytes, &reads);
    assert_eq!(whole, pieces, "read in pieces of {reads:?}, {bytes:?} reads otherwise");
    let Reading::Message {
        method,
        target,
        headers,
        body,
        consumed,
    } = whole
    else {
        return;
    };
    assert!(consumed <= bytes.len());
    let framing = |h: &(String, Vec<u8>)| h.0 == "content-length" || h.0 == "transfer-encoding";
    let framed = headers.iter().filter(|h| framing(h)).count();
    assert!(framed <= 1, "two framings taken: {headers:?}");
    // Written again plainly (one length, where it had a framing or a
    // body: a head at the header-count limit stays at it), it reads as
    // the same request.
    let mut again = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    let kept: Vec<_> = headers.into_iter().filter(|h| !framing(h)).collect();
    for (k, v) in &kept {
        again.extend_from_slice(k.as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(v);
        again.extend_from_slice(b"\r\n");
    }
    if framed == 1 || !body.is_empty() {
        again.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    again.extend_from_slice(b"\r\n");
    again.extend_from_slice(&body);
    match first_request(&again, &[]) {
        Reading::Message {
            method: m2,
            target: t2,
            headers: h2,
            body: b2,
            ..
        } => {
            let h2: Vec<_> = h2.into_iter().filter(|h| !framing(h)).collect();
            assert_eq!((m2, t2, h2, b2), (method, target, kept, body), "rewritten: {again:?}");
        }
        other => panic!("a request taken once is refused written plainly ({other:?}): {again:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed corpus file through its target (the crashes
    /// fuzzing found stay fixed; see docs/reliability.md).
    #[test]
    fn committed_corpus_replays_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, check) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| check(&data)).is_err() {
                    panic!("fuzz target {name} fails on {}", path.display());
                }
                n += 1;
            }
            assert!(n >= 5, "corpus of {name} has only {n} inputs");
        }
    }
}
