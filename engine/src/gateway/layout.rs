//! The version of the job directories' layout, `DATA/jobs/LAYOUT.json`: what a gateway
//! expects to find in `DATA/jobs/TENANT/JOB/` (`job.json`, `chunks.log`, the documents).
//! Like the job store's schema ([`crate::jobs::schema`]) it carries the oldest version code
//! must know to use it, so a rollback to a gateway that cannot read the directories is
//! refused at start, naming both versions, instead of misreading a job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The layout this build writes and reads.
pub const JOBS_LAYOUT_VERSION: u32 = 1;

/// The format id of `LAYOUT.json`.
const LAYOUT_FORMAT: &str = "trackshift.jobs-layout.v1";

/// `DATA/jobs/LAYOUT.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    format: String,
    version: u32,
    readable_from: u32,
}

/// Why the job directories cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A newer gateway laid them out in a way this one cannot read.
    #[error(
        "the job directories ({path}) are at layout version {found}, which needs a trackshift that knows version {needs} or later; this one knows up to {supported}: upgrade trackshift"
    )]
    TooNew {
        /// `LAYOUT.json`.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The oldest version code must know.
        needs: u32,
        /// [`JOBS_LAYOUT_VERSION`].
        supported: u32,
    },
    /// `LAYOUT.json` is not one.
    #[error("{path}: not a job directory layout file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing it failed.
    #[error(transparent)]
    Io(#[from] trackshift_crypto::CryptoError),
}

/// Checks (on first start: records) the layout of the job directories under `jobs`.
/// Returns the version found (before any upgrade of the file).
pub fn check_jobs_layout(jobs: &Path) -> Result<u32, LayoutError> {
    let path = jobs.join("LAYOUT.json");
    let current = Layout {
        format: LAYOUT_FORMAT.into(),
        version: JOBS_LAYOUT_VERSION,
        readable_from: 1,
    };
    let found = match std::fs::read(&path) {
        Ok(bytes) => {
            let l: Layout = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Malformed {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if l.format != LAYOUT_FORMAT {
                return Err(LayoutError::Malformed {
                    path,
                    reason: format!("format {:?}", l.format),
                });
            }
            if l.readable_from > JOBS_LAYOUT_VERSION {
                return Err(LayoutError::TooNew {
                    path,
                    found: l.version,
                    needs: l.readable_from,
                    supported: JOBS_LAYOUT_VERSION,
                });
            }
            l
        }
        // Directories from before the layout was recorded are version 1.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Layout {
            version: 0,
            ..current.clone()
        },
        Err(e) => {
            return Err(LayoutError::Malformed {
                path,
                reason: e.to_string(),
            });
        }
    };
    // No migration of directories yet: version 1 is the layout there has always been.
    if found.version < JOBS_LAYOUT_VERSION {
        let json = serde_json::to_vec_pretty(&current).expect("the layout serialises");
        trackshift_crypto::filestore::write_atomic(&path, &json, 0o600)?;
    }
    Ok(found.version.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_recorded_once_and_a_newer_unreadable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_jobs_layout(dir.path()).unwrap(), 1);
        let path = dir.path().join("LAYOUT.json");
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains(LAYOUT_FORMAT), "{written}");
        assert_eq!(check_jobs_layout(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        // A later gateway's layout this one can still read, then one it cannot.
        let later = |readable_from: u32| {
            let l = Layout {
                format: LAYOUT_FORMAT.into(),
                version: JOBS_LAYOUT_VERSION + 1,
                readable_from,
            };
            std::fs::write(&path, serde_json::to_vec(&l).unwrap()).unwrap();
        };
        later(1);
        assert_eq!(
            check_jobs_layout(dir.path()).unwrap(),
            JOBS_LAYOUT_VERSION + 1
        );
        later(JOBS_LAYOUT_VERSION + 1);
        let e = check_jobs_layout(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("layout version {}", JOBS_LAYOUT_VERSION + 1))
                && e.contains(&format!("knows up to {JOBS_LAYOUT_VERSION}")),
            "{e}"
        );
        std::fs::write(&path, b"{\"format\":\"x\"}").unwrap();
        assert!(matches!(
            check_jobs_layout(dir.path()),
            Err(LayoutError::Malformed { .. })
        ));
    }
}
