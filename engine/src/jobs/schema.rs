//! The job store's schema version and its migrations, the same on SQLite and PostgreSQL.
//!
//! `store_meta` keeps `schema_version` (absent: 1, the schema before versions were kept)
//! and `schema_readable_from`, the oldest version code must know to use the store. Every
//! migration so far only adds (a nullable column), so a gateway of the version before keeps
//! working on a migrated store: a rolling upgrade can run old and new side by side and roll
//! back without touching the database. A store whose `schema_readable_from` is newer than
//! this build knows is refused at start, naming both versions.

use super::store::StoreError;

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: u32 = 2;

/// One step of the schema.
struct Migration {
    /// The version the store has after it.
    to: u32,
    /// The oldest version code must know to use a store at `to` (`to - 1` or less: only
    /// additions).
    readable_from: u32,
    /// The statement (portable SQL).
    sql: &'static str,
    /// A query that succeeds when the step is already there (a store whose version rows
    /// were lost, say), so a step is never applied twice.
    done_if: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    readable_from: 1,
    sql: "ALTER TABLE jobs ADD COLUMN traceparent TEXT",
    done_if: "SELECT traceparent FROM jobs WHERE 1 = 0",
}];

/// What opening a store at some version takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Steps to run, in order, in the opening transaction (empty: none): each a query
    /// that succeeds when the step is already there, and the statement that makes it.
    pub statements: Vec<(&'static str, &'static str)>,
    /// The `store_meta` rows to write afterwards (`schema_version`, `schema_readable_from`);
    /// `None` when the store stays as it is.
    pub meta: Option<(u32, u32)>,
    /// The version the store was at.
    pub from: u32,
}

/// The plan for a store whose `store_meta` says `version` and `readable_from` (as read;
/// `None` when absent).
pub fn plan(version: Option<&str>, readable_from: Option<&str>) -> Result<Plan, StoreError> {
    let parse = |key: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| StoreError::Backend(format!("store_meta {key} is not a number: {v:?}")))
    };
    let version = version
        .map(|v| parse("schema_version", v))
        .transpose()?
        .unwrap_or(1);
    let readable_from = readable_from
        .map(|v| parse("schema_readable_from", v))
        .transpose()?
        .unwrap_or(version);
    if readable_from > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            needs: readable_from,
            supported: SCHEMA_VERSION,
        });
    }
    if version >= SCHEMA_VERSION {
        return Ok(Plan {
            statements: Vec::new(),
            meta: None,
            from: version,
        });
    }
    let steps: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.to > version).collect();
    let readable = steps
        .iter()
        .map(|m| m.readable_from)
        .chain([readable_from])
        .max()
        .unwrap_or(readable_from);
    Ok(Plan {
        statements: steps.iter().map(|m| (m.done_if, m.sql)).collect(),
        meta: Some((SCHEMA_VERSION, readable)),
        from: version,
    })
}

/// The statement that records the version (after the plan's statements ran).
pub const RECORD: &str = "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The statement that reads the version rows.
pub const READ: &str = "SELECT key, value FROM store_meta \
     WHERE key IN ('schema_version', 'schema_readable_from')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_from_before_versions_is_migrated_to_the_newest() {
        let p = plan(None, None).unwrap();
        assert_eq!(p.from, 1);
        assert_eq!(p.statements.len(), 1);
        assert_eq!(
            p.statements[0].1,
            "ALTER TABLE jobs ADD COLUMN traceparent TEXT"
        );
        assert_eq!(p.meta, Some((SCHEMA_VERSION, 1)));
    }

    #[test]
    fn a_current_store_is_left_alone() {
        let v = SCHEMA_VERSION.to_string();
        let p = plan(Some(&v), Some("1")).unwrap();
        assert!(p.statements.is_empty() && p.meta.is_none());
    }

    #[test]
    fn a_newer_store_is_used_when_readable_and_refused_when_not() {
        let newer = (SCHEMA_VERSION + 1).to_string();
        let p = plan(Some(&newer), Some("1")).unwrap();
        assert!(p.statements.is_empty() && p.meta.is_none(), "{p:?}");
        let e = plan(Some(&newer), Some(&newer)).unwrap_err();
        assert!(matches!(e, StoreError::SchemaTooNew { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("schema version {newer}")), "{text}");
        assert!(text.contains(&format!("up to {SCHEMA_VERSION}")), "{text}");
        assert!(plan(Some("two"), None).is_err());
    }

    #[test]
    fn migrations_are_in_order_and_only_add() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.to, i as u32 + 2);
            assert!(m.readable_from < m.to);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.to), Some(SCHEMA_VERSION));
    }
}
