//! Names the gateway reserves for its own temporary objects. No file of a job and no
//! destination path segment may take one, so that no name a tenant gives can collide with
//! another job's temporary or resume state.

/// Prefix of the gateway's own names (`.trackshift-<tag>.tspart`).
pub const RESERVED_PREFIX: &str = ".trackshift";

/// Suffix of the gateway's temporary object names.
pub const TEMP_SUFFIX: &str = ".tspart";

/// True when one path component is a name the gateway reserves.
pub fn is_reserved(component: &str) -> bool {
    component.starts_with(RESERVED_PREFIX) || component.ends_with(TEMP_SUFFIX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_names() {
        for r in [
            ".trackshift-ab.tspart",
            ".trackshift",
            "a.tspart",
            ".trackshiftx",
        ] {
            assert!(super::is_reserved(r), "{r}");
        }
        for ok in ["trackshift", "a.tspart.txt", ".tracks", "tspart"] {
            assert!(!super::is_reserved(ok), "{ok}");
        }
    }
}
