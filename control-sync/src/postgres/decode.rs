//! Change rows (`placement_changes`) -> [`Change`]s. Pure; unit-tested.
//!
//! A row carries the table name, the operation (`I`, `U`, `D`, or `*` for
//! "reload everything") and the row as JSON (`to_jsonb(NEW)`, or `OLD` for a
//! delete; `old` holds the previous row of an update). An update that
//! changes a key becomes a delete of the old key followed by an upsert.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::directory::OwnedName;
use crate::snapshot::*;
use crate::table::Change;

/// What one change row means.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Changes(Vec<Change>),
    /// A bulk import happened: do a full reload.
    Reload,
}

/// A change row that cannot be understood (forces a full reload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {version} ({tbl} {op}): {message}")]
pub struct DecodeError {
    pub version: i64,
    pub tbl: String,
    pub op: String,
    pub message: String,
}

fn parse<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| e.to_string())
}

fn field(v: &Value, name: &str) -> Result<String, String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("missing {name}"))
}

/// The key of a row of `tbl` (to notice key changes in updates).
fn key(tbl: &str, v: &Value) -> Result<String, String> {
    Ok(match tbl {
        "regions" | "clusters" => field(v, "name")?,
        "vms" | "repls" => field(v, "id")?,
        "containers" => field(v, "repl_id")?,
        "custom_domains" | "certificates" => field(v, "hostname")?,
        "acme_challenges" => field(v, "token")?,
        "tombstones" => format!("{}\u{0}{}", field(v, "repl_id")?, field(v, "from_cluster")?),
        other => return Err(format!("unknown table {other:?}")),
    })
}

fn delete(tbl: &str, v: &Value) -> Result<Change, String> {
    Ok(match tbl {
        "regions" => Change::DeleteRegion(field(v, "name")?),
        "clusters" => Change::DeleteCluster(field(v, "name")?),
        "vms" => Change::DeleteVm(field(v, "id")?),
        "repls" => Change::DeleteRepl(field(v, "id")?),
        "containers" => Change::DeleteContainer(field(v, "repl_id")?),
        "custom_domains" => Change::DeleteDomain(field(v, "hostname")?),
        "certificates" => Change::DeleteCertificate(field(v, "hostname")?),
        "acme_challenges" => Change::DeleteChallenge(field(v, "token")?),
        "tombstones" => Change::DeleteTombstone {
            repl_id: field(v, "repl_id")?,
            from_cluster: field(v, "from_cluster")?,
        },
        other => return Err(format!("unknown table {other:?}")),
    })
}

fn upsert(tbl: &str, v: &Value) -> Result<Change, String> {
    Ok(match tbl {
        "regions" => Change::UpsertRegion(parse::<RegionRow>(v)?),
        "clusters" => Change::UpsertCluster(parse::<ClusterRow>(v)?),
        "vms" => Change::UpsertVm(parse::<VmRow>(v)?),
        "repls" => Change::UpsertRepl(parse::<ReplRow>(v)?),
        "containers" => Change::UpsertContainer(parse::<ContainerRow>(v)?),
        "custom_domains" => Change::UpsertDomain(parse::<CustomDomainRow>(v)?),
        "tombstones" => Change::UpsertTombstone(parse::<TombstoneRow>(v)?),
        "certificates" => Change::UpsertCertificate(parse::<CertificateRow>(v)?),
        "acme_challenges" => Change::UpsertChallenge(parse::<AcmeChallengeRow>(v)?),
        other => return Err(format!("unknown table {other:?}")),
    })
}

/// Decodes one change row.
pub fn decode(version: i64, tbl: &str, op: &str, row: Option<&str>, old: Option<&str>) -> Result<Decoded, DecodeError> {
    let err = |message: String| DecodeError {
        version,
        tbl: tbl.into(),
        op: op.into(),
        message,
    };
    if op == "*" {
        return Ok(Decoded::Reload);
    }
    let json = |s: Option<&str>| -> Result<Value, DecodeError> {
        let s = s.ok_or_else(|| err("row is missing".into()))?;
        serde_json::from_str(s).map_err(|e| err(format!("row is not JSON: {e}")))
    };
    let row = json(row)?;
    let changes = match op {
        "I" => vec![upsert(tbl, &row).map_err(err)?],
        "D" => {
            let mut v = vec![delete(tbl, &row).map_err(err)?];
            if tbl == "repls" {
                // Another region's repl is known by its slug only.
                v.push(Change::DeleteDirectory(OwnedName::Slug(
                    field(&row, "slug").map_err(err)?,
                )));
            }
            v
        }
        "U" => {
            let mut v = Vec::with_capacity(3);
            if let Some(o) = old {
                let old = json(Some(o))?;
                if key(tbl, &old).map_err(err)? != key(tbl, &row).map_err(err)? {
                    v.push(delete(tbl, &old).map_err(err)?);
                }
                if tbl == "repls" {
                    let (was, is) = (field(&old, "slug").map_err(err)?, field(&row, "slug").map_err(err)?);
                    if was != is {
                        v.push(Change::DeleteDirectory(OwnedName::Slug(was)));
                    }
                }
            }
            v.push(upsert(tbl, &row).map_err(err)?);
            v
        }
        other => return Err(err(format!("unknown op {other:?}"))),
    };
    Ok(Decoded::Changes(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_inserts_deletes_and_updates() {
        let d = decode(
            1,
            "repls",
            "I",
            Some(
                r#"{"id":"r1","slug":"a","owner":null,"region":"r","cluster":null,"transfer_to":null,"new_column":1}"#,
            ),
            None,
        )
        .unwrap();
        match d {
            Decoded::Changes(c) => assert!(matches!(&c[..], [Change::UpsertRepl(r)] if r.id == "r1" && r.slug == "a")),
            other => panic!("{other:?}"),
        }
        let d = decode(
            2,
            "containers",
            "D",
            Some(r#"{"repl_id":"r1","vm_id":"v","started_at":"2026-01-01T00:00:00+00:00"}"#),
            None,
        )
        .unwrap();
        assert_eq!(d, Decoded::Changes(vec![Change::DeleteContainer("r1".into())]));
        let d = decode(
            3,
            "tombstones",
            "I",
            Some(r#"{"repl_id":"r1","from_cluster":"a","to_cluster":"b","expires_at":"2030-01-01T00:00:00+00:00"}"#),
            None,
        )
        .unwrap();
        assert!(matches!(d, Decoded::Changes(ref c) if matches!(&c[..], [Change::UpsertTombstone(_)])));
        assert_eq!(decode(4, "*", "*", None, None).unwrap(), Decoded::Reload);
    }

    #[test]
    fn key_changing_update_deletes_the_old_key() {
        let d = decode(
            5,
            "vms",
            "U",
            Some(r#"{"id":"v2","cluster":"c","addr":"1.2.3.4:5","metrics_addr":null,"state":"active"}"#),
            Some(r#"{"id":"v1","cluster":"c","addr":"1.2.3.4:5","metrics_addr":null,"state":"active"}"#),
        )
        .unwrap();
        match d {
            Decoded::Changes(c) => {
                assert_eq!(c[0], Change::DeleteVm("v1".into()));
                assert!(matches!(&c[1], Change::UpsertVm(v) if v.id == "v2"));
            }
            other => panic!("{other:?}"),
        }
        let same = decode(
            6,
            "vms",
            "U",
            Some(r#"{"id":"v1","cluster":"c","addr":"1.2.3.4:6","state":"draining"}"#),
            Some(r#"{"id":"v1","cluster":"c","addr":"1.2.3.4:5","state":"active"}"#),
        )
        .unwrap();
        assert!(matches!(same, Decoded::Changes(ref c) if c.len() == 1));
    }

    #[test]
    fn a_deleted_or_renamed_repl_leaves_the_directory_by_its_old_slug() {
        let row = r#"{"id":"r1","slug":"old","region":"r"}"#;
        let d = decode(12, "repls", "D", Some(row), None).unwrap();
        assert_eq!(
            d,
            Decoded::Changes(vec![
                Change::DeleteRepl("r1".into()),
                Change::DeleteDirectory(OwnedName::Slug("old".into()))
            ])
        );
        let d = decode(
            13,
            "repls",
            "U",
            Some(r#"{"id":"r1","slug":"new","region":"r"}"#),
            Some(row),
        )
        .unwrap();
        match d {
            Decoded::Changes(c) => {
                assert_eq!(c[0], Change::DeleteDirectory(OwnedName::Slug("old".into())));
                assert!(matches!(&c[1], Change::UpsertRepl(r) if r.slug == "new"));
            }
            other => panic!("{other:?}"),
        }
        let same = decode(
            14,
            "repls",
            "U",
            Some(r#"{"id":"r1","slug":"old","region":"s"}"#),
            Some(row),
        )
        .unwrap();
        assert!(
            matches!(same, Decoded::Changes(ref c) if c.len() == 1),
            "a region change keeps the name"
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(7, "repls", "I", Some("{not json"), None).is_err());
        assert!(
            decode(8, "repls", "I", Some(r#"{"id":"r1"}"#), None).is_err(),
            "missing slug"
        );
        assert!(decode(
            9,
            "vms",
            "I",
            Some(r#"{"id":"v","cluster":"c","addr":"a","state":"exploded"}"#),
            None
        )
        .is_err());
        assert!(decode(10, "nope", "I", Some("{}"), None).is_err());
        assert!(decode(11, "repls", "X", Some("{}"), None).is_err());
    }
}
