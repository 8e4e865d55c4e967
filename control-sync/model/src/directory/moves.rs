//! [`RecentMoves`]: app names whose repl moved between regions recently
//! (it has a live tombstone in any region), with the tombstone's expiry.
//! `edgeplane dns` answers them with `dns.moved_ttl_seconds` from every
//! region's responder, not only the one the app left: resolvers that
//! cached the new answer come back soon if the move is undone or followed
//! by another.
//!
//! Where it sits: beside the [`super::Directory`] in the routing table.
//! Fed by the sources: a full load's live tombstones of every region (by
//! their repls' slugs and custom domains), a delta's new tombstones, the
//! file source's snapshot. Not written to last-known-good files (a
//! responder restarted during an outage gives the normal TTL meanwhile).
//!
//! Small by nature (tombstones live minutes), copy-on-write like the rest
//! of the table, and bounded without a clock: at most [`MAX_RECENT_MOVES`]
//! names; past that the soonest to expire go first (expired ones before
//! any live one), a tenth at a time so the sort is rare. A full load
//! starts over with the live ones.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Name, OwnedName};

/// Most names kept (a `move-user` of a very large user is one batch).
pub const MAX_RECENT_MOVES: usize = 100_000;

/// Names of apps that moved, with when their move stops being recent
/// (Unix milliseconds).
#[derive(Debug, Clone, Default)]
pub struct RecentMoves {
    slugs: Arc<HashMap<Box<str>, i64>>,
    domains: Arc<HashMap<Box<str>, i64>>,
}

impl RecentMoves {
    /// Whether `name` moved recently at `now_ms`.
    pub fn contains(&self, name: Name<'_>, now_ms: i64) -> bool {
        let until = match name {
            Name::Slug(s) => self.slugs.get(s),
            Name::Domain(d) => self.domains.get(d),
        };
        until.is_some_and(|&u| u > now_ms)
    }

    pub fn len(&self) -> usize {
        self.slugs.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These moves with `adds` added (a name keeps its later expiry) and
    /// the total bounded. Copies the maps once per call.
    pub fn with(&self, adds: Vec<(OwnedName, i64)>) -> RecentMoves {
        if adds.is_empty() {
            return self.clone();
        }
        let mut slugs = (*self.slugs).clone();
        let mut domains = (*self.domains).clone();
        for (name, until) in adds {
            let (map, key) = match name {
                OwnedName::Slug(s) => (&mut slugs, s),
                OwnedName::Domain(d) => (&mut domains, d),
            };
            let e = map.entry(key.into_boxed_str()).or_insert(until);
            *e = (*e).max(until);
        }
        let total = slugs.len() + domains.len();
        if total > MAX_RECENT_MOVES {
            let drop = total - MAX_RECENT_MOVES * 9 / 10;
            let mut all: Vec<i64> = slugs.values().chain(domains.values()).copied().collect();
            all.sort_unstable();
            let cut = all[drop - 1];
            // Drop the soonest to expire (ties may drop a few more).
            slugs.retain(|_, u| *u > cut);
            domains.retain(|_, u| *u > cut);
        }
        RecentMoves {
            slugs: Arc::new(slugs),
            domains: Arc::new(domains),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_recent_until_its_tombstone_expires_and_keeps_the_later_expiry() {
        let m = RecentMoves::default().with(vec![
            (OwnedName::Slug("app".into()), 1_000),
            (OwnedName::Domain("www.example.com".into()), 2_000),
        ]);
        assert!(m.contains(Name::Slug("app"), 999));
        assert!(!m.contains(Name::Slug("app"), 1_000));
        assert!(!m.contains(Name::Domain("app"), 10), "slugs and domains do not meet");
        assert!(m.contains(Name::Domain("www.example.com"), 1_500));
        let m2 = m.with(vec![(OwnedName::Slug("app".into()), 500)]);
        assert!(m2.contains(Name::Slug("app"), 999), "the later expiry stays");
        assert!(
            m.contains(Name::Slug("app"), 999),
            "copy-on-write: the old set is untouched"
        );
    }

    #[test]
    fn a_long_lived_move_does_not_push_out_a_short_one_and_the_set_is_bounded() {
        let m = RecentMoves::default()
            .with(vec![(OwnedName::Slug("for-years".into()), 4_000_000_000_000)])
            .with(vec![(OwnedName::Slug("minutes".into()), 1_000_000)]);
        assert!(m.contains(Name::Slug("minutes"), 999_999));
        let many: Vec<_> = (0..MAX_RECENT_MOVES as i64 + 10)
            .map(|i| (OwnedName::Slug(format!("s{i}")), 10_000 + i))
            .collect();
        let m = m.with(many);
        assert!(
            m.len() <= MAX_RECENT_MOVES && m.len() >= MAX_RECENT_MOVES * 9 / 10 - 1,
            "{}",
            m.len()
        );
        assert!(!m.contains(Name::Slug("s0"), 0), "the soonest to expire went first");
        assert!(m.contains(Name::Slug(&format!("s{}", MAX_RECENT_MOVES + 9)), 0));
        assert!(m.contains(Name::Slug("for-years"), 0) && m.contains(Name::Slug("minutes"), 0));
    }
}
