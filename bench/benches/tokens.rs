//! Criterion benchmark of workspace token verification (issue 29): what
//! one workspace session costs the edge to admit, version 2 (PASETO
//! `v4.public`, an Ed25519 signature check) next to version 1 (HMAC-SHA256),
//! with the edge's own `Verifier` (three v2 keys, as during a rotation, and
//! the v1 key of the migration). Also the refusals a flood would cost: a
//! token naming an unknown key (no signature check) and a bad signature.
//!
//! `cargo bench -p edgeplane-bench --bench tokens`; the result is kept in
//! bench/results/tokens.txt.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use edgeplane_token::{keygen, mint, v1, Claims, Verifier};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: u64 = 1_800_000_000;
const V1_KEY: &[u8] = b"bench-workspace-key-0123456789";

fn verify(c: &mut Criterion) {
    let keys: Vec<_> = (0..3).map(|_| keygen().unwrap()).collect();
    let stranger = keygen().unwrap();
    let verifier = Verifier::new(
        keys.iter().map(|k| k.public_key().clone()).collect(),
        Some(V1_KEY.to_vec()),
    );
    let claims = Claims {
        repl: "6f1c2a7e-3b9d-4c1e-9a55-0b7d8e2f4a11",
        region: "ap-south1",
        cluster: Some("aps1-a"),
        expires_at: NOW + 3600,
    };
    let v2 = mint(&keys[2], &claims).unwrap();
    let unknown = mint(&stranger, &claims).unwrap();
    let mut forged = v2.clone().into_bytes();
    forged[40] ^= 1;
    let forged = String::from_utf8(forged).unwrap();
    let legacy = v1::mint(V1_KEY, claims.repl, NOW + 3600);
    assert!(verifier.verify(Some(&v2), claims.repl, NOW).is_ok());
    assert!(verifier.verify(Some(&legacy), claims.repl, NOW).is_ok());
    assert!(verifier.verify(Some(&unknown), claims.repl, NOW).is_err());
    assert!(verifier.verify(Some(&forged), claims.repl, NOW).is_err());
    eprintln!("token bytes: v2 {}, v1 {}", v2.len(), legacy.len());

    let mut g = c.benchmark_group("workspace_token");
    for (name, token) in [
        ("v2_valid", &v2),
        ("v1_valid", &legacy),
        ("v2_unknown_key", &unknown),
        ("v2_bad_signature", &forged),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(Some(token.as_str())), black_box(claims.repl), NOW))
        });
    }
    g.bench_function("v2_mint", |b| b.iter(|| mint(&keys[0], black_box(&claims))));
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
