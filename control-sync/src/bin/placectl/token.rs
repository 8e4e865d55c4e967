//! `placectl token keygen | mint`: workspace session tokens, version 2
//! (docs/contract.md §6), without a database.
//!
//! - `keygen --out FILE`: a new Ed25519 key pair. FILE gets the secret as
//!   PASERK `k4.secret.` (mode 0600, never over an existing file): it
//!   belongs on the web servers that mint sessions. FILE.pub gets one line,
//!   the `k4.public.` key, ready to append to every edge's
//!   `security.workspace_token_public_keys_file`.
//! - `mint --key FILE --repl ID --region R [--cluster C] [--ttl 1h]`:
//!   prints a token, exactly as the web server's call of
//!   `edgeplane_token::mint` makes it (`#` lines of FILE are comments).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Write a new key pair: FILE (secret, for the web servers) and
    /// FILE.pub (one public key line, for the edges).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a version 2 workspace token.
    Mint {
        /// The secret key file (`k4.secret.`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        repl: String,
        /// The repl's home region.
        #[arg(long)]
        region: String,
        #[arg(long)]
        cluster: Option<String>,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

pub fn run(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Keygen { out } => keygen(&out),
        TokenCmd::Mint {
            key,
            repl,
            region,
            cluster,
            ttl,
        } => {
            let text = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            // `#` lines are comments (what the key is for, who holds it).
            let text: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
            let key = edgeplane_token::SecretKey::from_paserk(&text).with_context(|| key.display().to_string())?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("clock before 1970")?;
            let token = edgeplane_token::mint(
                &key,
                &edgeplane_token::Claims {
                    repl: &repl,
                    region: &region,
                    cluster: cluster.as_deref(),
                    expires_at: (now + ttl).as_secs(),
                },
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

fn keygen(out: &Path) -> Result<()> {
    let key = edgeplane_token::keygen()?;
    let public = PathBuf::from(format!("{}.pub", out.display()));
    for p in [out, public.as_path()] {
        if p.exists() {
            bail!("{} exists: refusing to overwrite a key", p.display());
        }
    }
    write_new(out, 0o600, &format!("{}\n", key.to_paserk()))?;
    write_new(&public, 0o644, &format!("{}\n", key.public_key().to_paserk()))?;
    println!(
        "wrote {} (secret: for the web servers only) and {} (append it to each edge's \
         workspace_token_public_keys_file); key id {}",
        out.display(),
        public.display(),
        key.public_key().kid()
    );
    Ok(())
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `3600`, `90s`, `10m`, `1h`, `2d`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("a token must live at least a second".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1w").is_err() && parse_ttl("h").is_err() && parse_ttl("0").is_err());
    }
}
