use super::*;

const NOW: u64 = 1_800_000_000;
const V1_KEY: &[u8] = b"test-workspace-key-0123456789";

fn claims<'a>(repl: &'a str, region: &'a str) -> Claims<'a> {
    Claims {
        repl,
        region,
        cluster: Some("use1-a"),
        expires_at: NOW + 3600,
    }
}

fn verifier(keys: &[&SecretKey], v1: bool) -> Verifier {
    Verifier::new(
        keys.iter().map(|k| k.public_key().clone()).collect(),
        v1.then(|| V1_KEY.to_vec()),
    )
}

fn refused(version: Option<Version>, why: Refusal) -> Result<Session, Refused> {
    Err(Refused { version, why })
}

#[test]
fn a_minted_token_opens_its_repl_and_says_where_it_lives() {
    let sk = keygen().unwrap();
    let tok = mint(&sk, &claims("r1", "ap-south1")).unwrap();
    assert!(tok.starts_with("v4.public."), "{tok}");
    let v = verifier(&[&sk], false);
    let s = v.verify(Some(&tok), "r1", NOW).unwrap();
    assert_eq!(s.version, Version::V2);
    assert_eq!(s.region.as_deref(), Some("ap-south1"));
    assert_eq!(s.cluster.as_deref(), Some("use1-a"));
    assert_eq!(s.kid.as_deref(), Some(sk.public_key().kid()));
    assert!(sk.public_key().kid().starts_with("k4.pid."));
}

#[test]
fn expiry_repl_key_and_signature_are_all_checked() {
    let sk = keygen().unwrap();
    let other = keygen().unwrap();
    let v = verifier(&[&sk], false);
    let tok = mint(&sk, &claims("r1", "us-east1")).unwrap();
    let v2 = Some(Version::V2);
    assert_eq!(v.verify(Some(&tok), "r1", NOW + 3600), refused(v2, Refusal::Expired));
    assert_eq!(v.verify(Some(&tok), "r2", NOW), refused(v2, Refusal::WrongRepl));
    let foreign = mint(&other, &claims("r1", "us-east1")).unwrap();
    assert_eq!(v.verify(Some(&foreign), "r1", NOW), refused(v2, Refusal::UnknownKey));
    // The other key's signature under this key's kid: the footer is signed,
    // so swapping it breaks the signature.
    let (body, _) = foreign.rsplit_once('.').unwrap();
    let (_, footer) = tok.rsplit_once('.').unwrap();
    let swapped = format!("{body}.{footer}");
    assert_eq!(v.verify(Some(&swapped), "r1", NOW), refused(v2, Refusal::BadSignature));
    // One flipped payload character.
    let mut bytes = tok.clone().into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_eq!(v.verify(Some(&tampered), "r1", NOW), refused(v2, Refusal::BadSignature));
}

#[test]
fn rotation_is_adding_a_key_then_removing_the_old_one() {
    let old = keygen().unwrap();
    let new = keygen().unwrap();
    let old_tok = mint(&old, &claims("r1", "us-east1")).unwrap();
    let new_tok = mint(&new, &claims("r1", "us-east1")).unwrap();
    let both = verifier(&[&old, &new], false);
    assert!(both.verify(Some(&old_tok), "r1", NOW).is_ok());
    assert!(both.verify(Some(&new_tok), "r1", NOW).is_ok());
    let only_new = verifier(&[&new], false);
    assert!(only_new.verify(Some(&new_tok), "r1", NOW).is_ok());
    assert_eq!(
        only_new.verify(Some(&old_tok), "r1", NOW),
        refused(Some(Version::V2), Refusal::UnknownKey)
    );
}

#[test]
fn version_one_is_accepted_only_while_its_key_is_configured() {
    let sk = keygen().unwrap();
    let t1 = v1::mint(V1_KEY, "r1", NOW + 10);
    let migrating = verifier(&[&sk], true);
    let s = migrating.verify(Some(&t1), "r1", NOW).unwrap();
    assert_eq!((s.version, s.region), (Version::V1, None));
    assert_eq!(
        migrating.verify(Some(&t1), "r1", NOW + 10),
        refused(Some(Version::V1), Refusal::Expired)
    );
    assert_eq!(
        migrating.verify(Some(&t1), "r9", NOW),
        refused(Some(Version::V1), Refusal::WrongRepl)
    );
    let bad = v1::mint(b"another-key-0000000000", "r1", NOW + 10);
    assert_eq!(
        migrating.verify(Some(&bad), "r1", NOW),
        refused(Some(Version::V1), Refusal::BadSignature)
    );
    let done = verifier(&[&sk], false);
    assert_eq!(
        done.verify(Some(&t1), "r1", NOW),
        refused(Some(Version::V1), Refusal::Disabled)
    );
    // An edge with no v2 key refuses v2 tokens as disabled.
    let v1_only = Verifier::new(Vec::new(), Some(V1_KEY.to_vec()));
    let t2 = mint(&sk, &claims("r1", "us-east1")).unwrap();
    assert_eq!(
        v1_only.verify(Some(&t2), "r1", NOW),
        refused(Some(Version::V2), Refusal::Disabled)
    );
}

#[test]
fn garbage_is_malformed_and_never_panics() {
    let sk = keygen().unwrap();
    let v = verifier(&[&sk], true);
    assert_eq!(v.verify(None, "r1", NOW), refused(None, Refusal::Missing));
    assert_eq!(v.verify(Some(""), "r1", NOW), refused(None, Refusal::Missing));
    for t in [
        "x",
        "a.b.c",
        "v4.public.",
        "v4.public.!!!",
        "v4.local.AAAA",
        "v3.public.AAAA.AAAA",
    ] {
        let got = v.verify(Some(t), "r1", NOW).unwrap_err();
        assert_eq!(got.why, Refusal::Malformed, "{t}");
    }
    // A real signature over a payload that is not our claims.
    let odd = pasetors::version4::PublicToken::sign(
        sk.key(),
        br#"{"data":"x"}"#,
        Some(format!(r#"{{"kid":"{}"}}"#, sk.public_key().kid()).as_bytes()),
        None,
    )
    .unwrap();
    assert_eq!(v.verify(Some(&odd), "r1", NOW).unwrap_err().why, Refusal::Malformed);
    // No footer: no key named.
    let bare = pasetors::version4::PublicToken::sign(sk.key(), br#"{"repl":"r1"}"#, None, None).unwrap();
    assert_eq!(v.verify(Some(&bare), "r1", NOW).unwrap_err().why, Refusal::Malformed);
    let long = format!("v4.public.{}", "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(v.verify(Some(&long), "r1", NOW).unwrap_err().why, Refusal::Malformed);
    assert_eq!(v.verify(Some("a.b"), "r1", NOW).unwrap_err().why, Refusal::Malformed);
}

#[test]
fn not_before_allows_clock_skew_only() {
    let sk = keygen().unwrap();
    let v = verifier(&[&sk], false);
    let sign = |nbf: u64| {
        let fmt = |s: u64| {
            time::OffsetDateTime::from_unix_timestamp(s as i64)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let payload = format!(
            r#"{{"repl":"r1","region":"us-east1","exp":"{}","nbf":"{}"}}"#,
            fmt(NOW + 3600),
            fmt(nbf)
        );
        let footer = format!(r#"{{"kid":"{}"}}"#, sk.public_key().kid());
        pasetors::version4::PublicToken::sign(sk.key(), payload.as_bytes(), Some(footer.as_bytes()), None).unwrap()
    };
    assert!(v.verify(Some(&sign(NOW + 30)), "r1", NOW).is_ok());
    assert_eq!(
        v.verify(Some(&sign(NOW + 600)), "r1", NOW).unwrap_err().why,
        Refusal::NotYetValid
    );
}

#[test]
fn keys_round_trip_through_paserk_and_refuse_the_wrong_half() {
    let sk = keygen().unwrap();
    let secret = sk.to_paserk();
    assert!(secret.starts_with("k4.secret."));
    let back = SecretKey::from_paserk(&format!("  {secret}\n")).unwrap();
    assert_eq!(back.public_key(), sk.public_key());
    let public = sk.public_key().to_paserk().to_string();
    assert!(public.starts_with("k4.public."));
    assert_eq!(PublicKey::from_paserk(&public).unwrap(), *sk.public_key());
    assert_eq!(PublicKey::from_paserk(&secret), Err(KeyError::SecretWherePublic));
    assert_eq!(
        SecretKey::from_paserk(&public).unwrap_err(),
        KeyError::PublicWhereSecret
    );
    assert!(matches!(
        PublicKey::from_paserk("k4.public.short"),
        Err(KeyError::Encoding { .. })
    ));
    assert!(matches!(
        PublicKey::from_paserk("hello"),
        Err(KeyError::NotPaserk { .. })
    ));
    // Nothing secret in Debug output.
    let dbg = format!("{sk:?} {:?}", verifier(&[&sk], true));
    assert!(
        !dbg.contains(&secret[10..20]) && !dbg.contains("test-workspace-key"),
        "{dbg}"
    );
}

#[test]
fn mint_refuses_empty_claims() {
    let sk = keygen().unwrap();
    assert_eq!(mint(&sk, &claims("", "us-east1")), Err(MintError::EmptyClaim("repl")));
    assert_eq!(mint(&sk, &claims("r1", "")), Err(MintError::EmptyClaim("region")));
}
