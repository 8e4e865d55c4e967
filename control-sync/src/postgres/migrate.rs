//! Schema migrations, embedded in the binary and applied in order by
//! `placectl migrate` (idempotent; concurrent runs serialise on a lock).

use tokio_postgres::Client;

/// (version, name, SQL), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "placement", include_str!("../../migrations/0001_placement.sql")),
    (2, "sizes", include_str!("../../migrations/0002_sizes.sql")),
    (
        3,
        "version per transaction",
        include_str!("../../migrations/0003_version_per_transaction.sql"),
    ),
    (
        4,
        "certificates",
        include_str!("../../migrations/0004_certificates.sql"),
    ),
];

/// Applies the migrations not yet applied; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS edgeplane_migrations (
                 version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE edgeplane_migrations IN EXCLUSIVE MODE")
        .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM edgeplane_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO edgeplane_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        done.push(*version);
    }
    tx.commit().await?;
    Ok(done)
}
