//! Unit tests of `tenants`.

use super::*;

fn tenant(rules: Option<Vec<DestinationRule>>) -> TenantEntry {
    TenantEntry {
        destinations: rules,
        ..TenantEntry::new("acme", "k")
    }
}

fn rule(prefix: &str, classes: &[&str]) -> DestinationRule {
    DestinationRule {
        classifications: classes.iter().map(|s| (*s).to_string()).collect(),
        ..DestinationRule::prefix(prefix)
    }
}

#[test]
fn a_tenant_file_others_can_read_or_change_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = TenantFile {
        tenants: vec![tenant(Some(vec![rule("null://", &[])]))],
    };
    file.save(dir.path()).unwrap();
    assert_eq!(TenantFile::load(dir.path()).unwrap().tenants.len(), 1);
    let path = TenantFile::path(dir.path());
    for mode in [0o644, 0o660, 0o606, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = TenantFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(TenantFile::load(dir.path()).is_ok());
}

#[test]
fn destinations_match_at_path_boundaries_only() {
    let t = tenant(Some(vec![
        rule("s3://acme/in", &[]),
        rule("file:///srv/a/", &[]),
    ]));
    assert!(t.check_destination("s3://acme/in", None).is_ok());
    assert!(t.check_destination("s3://acme/in/x", None).is_ok());
    assert!(t.check_destination("s3://acme/in/", None).is_ok());
    assert!(t.check_destination("s3://acme/inx", None).is_err());
    assert!(t.check_destination("s3://acme-evil/in", None).is_err());
    assert!(t.check_destination("file:///srv/a/b", None).is_ok());
    assert!(t.check_destination("file:///srv/a/../b", None).is_err());
    assert!(t.check_destination("file:///srv/a/%2e%2e/b", None).is_err());
    assert!(t.check_destination("file:///srv/ab", None).is_err());
}

#[test]
fn classified_jobs_go_only_where_their_class_is_allowed() {
    let t = tenant(Some(vec![
        rule("s3://phi/", &["phi", "internal"]),
        rule("s3://open/", &[]),
    ]));
    assert!(t.check_destination("s3://phi/x", Some("phi")).is_ok());
    assert!(t.check_destination("s3://phi/x", None).is_ok());
    let e = t.check_destination("s3://open/x", Some("phi")).unwrap_err();
    assert!(e.0.contains("may not receive \"phi\""), "{e}");
    // No rules: nowhere.
    let none = tenant(None);
    let e = none.check_destination("null://", None).unwrap_err();
    assert!(e.0.contains("no destinations"), "{e}");
}

#[test]
fn fragment_and_query_tricks_do_not_escape_the_prefix() {
    let t = tenant(Some(vec![rule("file:///X/allowed/", &[])]));
    for uri in [
        "file:///X/allowed/#/../../outside",
        "file:///X/allowed/?/../../outside",
        "file:///X/allowed/%2e%2e/outside",
        "file:///X/allowed/%2E%2E%2Foutside",
        "file:///X/allowed/a%2f..%2f..%2foutside",
        "file:///X/allowed/..%5c..%5coutside",
        "file:///X/allowed\\..\\outside",
        "file:///X/allowed//../outside",
        "file:///X/allowed/x%00",
    ] {
        assert!(t.check_destination(uri, None).is_err(), "{uri} accepted");
    }
    let d = t
        .check_destination("file:///X/allowed/%23/in", None)
        .unwrap();
    assert_eq!(d.segments(), ["X", "allowed", "#", "in"]);
    assert_eq!(d.trusted_segments(), 2);
}

#[test]
fn a_job_cannot_choose_the_endpoint_or_any_file_the_gateway_reads() {
    let t = tenant(Some(vec![
        DestinationRule {
            options: [("endpoint".to_string(), "https://s3.internal".to_string())].into(),
            job_options: vec!["overwrite".into()],
            ..DestinationRule::prefix("s3://bucket/in/")
        },
        DestinationRule {
            options: [("known_hosts".to_string(), "/etc/ts/kh".to_string())].into(),
            ..DestinationRule::prefix("sftp://up@files.example/in")
        },
    ]));
    for uri in [
        "s3://bucket/in/?endpoint=http://127.0.0.1:9555&allow_http=true",
        "s3://bucket/in/x?region=evil",
        "sftp://up@files.example/in?known_hosts=/etc/shadow",
        "sftp://up@files.example/in?key=/proc/self/environ",
        "sftp://up@files.example/in?fingerprint=SHA256:x",
        "ftps://up@files.example/in?ca=/dev/zero",
    ] {
        let e = t.check_destination(uri, None).unwrap_err();
        assert!(e.0.contains("operator"), "{uri}: {e}");
    }
    // Job options only where the rule lists them.
    let e = t
        .check_destination("sftp://up@files.example/in?overwrite=true", None)
        .unwrap_err();
    assert!(e.0.contains("not allowed"), "{e}");
    let d = t
        .check_destination("s3://bucket/in/x?overwrite=true", None)
        .unwrap();
    assert_eq!(d.option("endpoint"), Some("https://s3.internal"));
    assert!(d.overwrite());
    // Another host or user on the same path is another destination.
    assert!(
        t.check_destination("sftp://up@evil.example/in", None)
            .is_err()
    );
    assert!(
        t.check_destination("sftp://root@files.example/in", None)
            .is_err()
    );
    assert!(
        t.check_destination("sftp://up@files.example:2222/in", None)
            .is_err()
    );
}

#[test]
fn a_rule_cannot_hand_operator_options_to_jobs_or_reach_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let write = |t: TenantEntry| {
        TenantFile { tenants: vec![t] }.save(data.path()).unwrap();
        TenantFile::load(data.path())
    };
    let e = write(tenant(Some(vec![DestinationRule {
        job_options: vec!["endpoint".into()],
        ..DestinationRule::prefix("s3://bucket/")
    }])))
    .unwrap_err();
    assert!(e.to_string().contains("operator's setting"), "{e}");
    let e = write(tenant(Some(vec![rule("s3://bucket/?endpoint=x", &[])]))).unwrap_err();
    assert!(e.to_string().contains("\"options\""), "{e}");
    for inside in [
        data.path().to_path_buf(),
        data.path().join("keys"),
        "/".into(),
    ] {
        let e = write(tenant(Some(vec![rule(
            &format!("file://{}", inside.display()),
            &[],
        )])))
        .unwrap_err();
        assert!(e.to_string().contains("data directory"), "{e}");
        let e = write(TenantEntry {
            sources: vec![inside.clone()],
            ..tenant(None)
        })
        .unwrap_err();
        assert!(e.to_string().contains("data directory"), "{e}");
    }
}

#[test]
fn sources_must_lie_under_a_configured_directory() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("acme");
    let other = root.path().join("other");
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(allowed.join("f"), b"x").unwrap();
    std::fs::write(other.join("g"), b"y").unwrap();
    let mut t = tenant(None);
    assert!(
        t.check_source(&allowed.join("f"), None).is_err(),
        "no sources configured"
    );
    t.sources = vec![allowed.clone()];
    let c = t.check_source(&allowed.join("f"), None).unwrap();
    assert_eq!((c.root.as_path(), c.rel.as_str()), (allowed.as_path(), "f"));
    let c = t.check_source(&allowed, None).unwrap();
    assert_eq!(c.rel, "");
    assert!(t.check_source(Path::new("relative"), None).is_err());
    // Beneath the directory as the operator wrote it or as it resolves.
    let link = root.path().join("acme-link");
    std::os::unix::fs::symlink(&allowed, &link).unwrap();
    t.sources = vec![link.clone()];
    assert_eq!(t.check_source(&link.join("f"), None).unwrap().root, link);
    let c = t.check_source(&allowed.join("f"), None).unwrap();
    assert_eq!(c.root, std::fs::canonicalize(&allowed).unwrap());
    t.sources = vec![allowed.clone()];
    // An inside path that is missing may say so: it is the tenant's own tree.
    let e = t.check_source(&allowed.join("missing"), None).unwrap_err();
    assert!(e.0.contains("does not exist"), "{e}");
}

#[test]
fn outside_sources_answer_the_same_whether_or_not_they_exist() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("acme");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(root.path().join("secret"), b"s").unwrap();
    let mut t = tenant(None);
    t.sources = vec![allowed.clone()];
    let answer = |p: &Path| {
        let e = t.check_source(p, None).unwrap_err().0;
        assert!(e.contains("not allowed"), "{e}");
        e.replace(&p.display().to_string(), "PATH")
    };
    let existing = answer(&root.path().join("secret"));
    assert_eq!(existing, answer(&root.path().join("no-such-file")));
    assert_eq!(existing, answer(Path::new("/etc/passwd")));
    assert_eq!(existing, answer(Path::new("/no/such/dir/at/all")));
    // `..` is refused as written, even where it would land inside again.
    assert_eq!(existing, answer(&allowed.join("../secret")));
    assert_eq!(existing, answer(&allowed.join("../nothing-here")));
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::write(allowed.join("f"), b"x").unwrap();
    assert_eq!(existing, answer(&allowed.join("sub/../f")));
    // A sibling whose name starts with the directory's is not beneath it.
    assert_eq!(existing, answer(&root.path().join("acme-evil/f")));
}

#[test]
fn a_symlink_as_the_source_itself_or_on_its_way_is_not_allowed() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("acme");
    let other = root.path().join("other");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("g"), b"y").unwrap();
    let mut t = tenant(None);
    t.sources = vec![allowed.clone()];
    std::os::unix::fs::symlink(other.join("g"), allowed.join("file-link")).unwrap();
    std::os::unix::fs::symlink(&other, allowed.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(other.join("none"), allowed.join("dangling")).unwrap();
    std::os::unix::fs::symlink("f", allowed.join("inside-link")).unwrap();
    std::fs::write(allowed.join("f"), b"x").unwrap();
    for p in [
        "file-link",
        "dir-link",
        "dir-link/g",
        "dir-link/none",
        "dangling",
        "inside-link",
    ] {
        let e = t.check_source(&allowed.join(p), None).unwrap_err();
        assert!(e.0.contains("not allowed"), "{p}: {e}");
    }
    // What is behind a link is not told: the same answer with or without a target.
    let msg = |p: &str| {
        t.check_source(&allowed.join(p), None)
            .unwrap_err()
            .0
            .replace(p, "P")
    };
    assert_eq!(msg("dir-link/g"), msg("dir-link/none"));
}

#[test]
fn a_source_that_is_or_holds_the_data_directory_is_not_allowed() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("acme");
    let data = allowed.join("gw/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("service.key"), [0u8; 32]).unwrap();
    std::fs::create_dir_all(allowed.join("ok")).unwrap();
    // The tenant file refuses this overlap at load; a job's path is checked as well.
    let mut t = tenant(None);
    t.sources = vec![allowed.clone()];
    for p in [allowed.clone(), allowed.join("gw"), data.clone()] {
        let e = t.check_source(&p, Some(&data)).unwrap_err();
        assert!(e.0.contains("not allowed"), "{}: {e}", p.display());
    }
    assert!(t.check_source(&allowed.join("ok"), Some(&data)).is_ok());
}

#[test]
fn a_hard_linked_file_as_the_source_is_not_allowed() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("acme");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(root.path().join("secret"), b"s").unwrap();
    std::fs::hard_link(root.path().join("secret"), allowed.join("hl")).unwrap();
    let mut t = tenant(None);
    t.sources = vec![allowed.clone()];
    let e = t.check_source(&allowed.join("hl"), None).unwrap_err();
    assert!(
        e.0.contains("not allowed") && e.0.contains("hard link"),
        "{e}"
    );
}

#[test]
fn keys_authenticate_their_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    add_key(dir.path(), "a", "key-a", &[]).unwrap();
    add_key(dir.path(), "b", "key-b", &["null://"]).unwrap();
    add_key(dir.path(), "a", "key-a2", &[]).unwrap();
    let file = TenantFile::load(dir.path()).unwrap();
    assert_eq!(file.authenticate("key-a").unwrap().tenant, "a");
    assert_eq!(file.authenticate("key-a2").unwrap().tenant, "a");
    assert_eq!(file.authenticate("key-b").unwrap().tenant, "b");
    assert!(file.authenticate("key-c").is_none());
    assert!(file.authenticate("").is_none());
    let text = std::fs::read_to_string(TenantFile::path(dir.path())).unwrap();
    assert!(!text.contains("key-a"), "keys are stored hashed");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(TenantFile::path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn service_tokens_speak_for_one_tenant_and_cannot_be_forged() {
    let dir = tempfile::tempdir().unwrap();
    let key = ServiceKey::load_or_create(dir.path()).unwrap();
    let again = ServiceKey::load_or_create(dir.path()).unwrap();
    let t = key.token_for("acme");
    assert_eq!(again.verify(&t).as_deref(), Some("acme"), "persisted");
    let forged = t.replacen("acme", "other", 1);
    assert_eq!(key.verify(&forged), None);
    let other = ServiceKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
    assert_eq!(other.verify(&t), None, "another gateway's key");
    assert_eq!(key.verify("svc1.acme.zz"), None);
    assert_eq!(key.verify("acme"), None);
    assert!(!format!("{key:?}").contains(|c: char| c.is_ascii_digit()));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("service.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn older_single_key_files_still_load_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = format!(
        r#"{{"tenants":[{{"tenant":"old","token_sha256":"{}"}}]}}"#,
        hex::encode(key_digest("legacy").0)
    );
    std::fs::write(TenantFile::path(dir.path()), legacy).unwrap();
    // Owner-only, as `save` makes it (a file others can read is refused for that alone).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        TenantFile::path(dir.path()),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let file = TenantFile::load(dir.path()).unwrap();
    assert_eq!(file.authenticate("legacy").unwrap().tenant, "old");
    for bad in [
        r#"{"tenants":[{"tenant":"a","surprise":1}]}"#,
        r#"{"tenants":[{"tenant":"a"},{"tenant":"a"}]}"#,
        r#"{"tenants":[{"tenant":"../x"}]}"#,
        r#"{"tenants":[{"tenant":"a","share":0}]}"#,
    ] {
        std::fs::write(TenantFile::path(dir.path()), bad).unwrap();
        let err = TenantFile::load(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("mode"), "refused for its content: {err}");
    }
}

#[test]
fn a_reload_replaces_the_whole_file_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("b.env");
    std::fs::write(&creds, "AWS_ACCESS_KEY_ID=one\n").unwrap();
    let owner_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode;
    std::fs::set_permissions(&creds, owner_only(0o600)).unwrap();
    let save = |tenants: Vec<TenantEntry>| TenantFile { tenants }.save(dir.path()).unwrap();
    save(vec![TenantEntry::new("a", "key-a")]);
    let live = LiveTenants::load(dir.path()).unwrap();
    assert_eq!(live.current().generation, 0);
    assert!(live.current().file.authenticate("key-b").is_none());

    save(vec![TenantEntry {
        credentials: Some(creds.clone()),
        ..TenantEntry::new("b", "key-b")
    }]);
    let next = live.reload().unwrap();
    assert_eq!(next.generation, 1);
    assert_eq!(
        live.current().file.authenticate("key-b").unwrap().tenant,
        "b"
    );
    assert!(live.current().file.authenticate("key-a").is_none());
    let b = &live.current().credentials["b"];
    assert_eq!(b.var("AWS_ACCESS_KEY_ID").as_deref(), Some("one"));

    // A broken file, a missing one, or one naming a credentials file that is gone:
    // nothing changes.
    std::fs::write(TenantFile::path(dir.path()), "{ oops").unwrap();
    assert!(live.reload().is_err());
    std::fs::remove_file(TenantFile::path(dir.path())).unwrap();
    assert!(live.reload().is_err());
    std::fs::remove_file(&creds).unwrap();
    save(vec![TenantEntry {
        credentials: Some(creds.clone()),
        ..TenantEntry::new("c", "key-c")
    }]);
    assert!(live.reload().is_err());
    let kept = live.current();
    assert_eq!(kept.generation, 1);
    assert_eq!(kept.file.authenticate("key-b").unwrap().tenant, "b");
    assert!(kept.file.authenticate("key-c").is_none());
}

#[test]
fn admission_checks_every_destination_then_the_source_with_the_same_rules() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut t = tenant(Some(vec![
        rule("file:///srv/acme", &[]),
        rule("s3://bucket/acme", &["pii"]),
    ]));
    t.sources = vec![src.clone()];
    let dests = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    let both = &dests(&["file:///srv/acme/x", "s3://bucket/acme/y"]);
    let a = t.admit(ask(both, None), None).unwrap();
    assert!(a.source.is_none());
    // The same values the policy check gives, in the job's order.
    let want: Vec<_> = both
        .iter()
        .map(|d| t.check_destination(d, None).unwrap())
        .collect();
    assert_eq!(a.destinations, want);
    // A source is confined beneath its directory.
    let s = src.as_path();
    let a = t.admit(ask(both, Some(s)), None).unwrap();
    assert_eq!(a.source.unwrap().root, src);
    // A destination that does not parse is told apart from one the policy refuses.
    let bad = &dests(&["file:///srv/acme/x", "gopher://x"]);
    let e = t.admit(ask(bad, None), None).unwrap_err();
    assert!(
        matches!(&e, AdmissionError::Malformed { uri, .. } if uri == "gopher://x"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("refused by policy: destination \"gopher://x\"")
    );
    let other = &dests(&["file:///srv/other/x"]);
    let e = t.admit(ask(other, Some(s)), None).unwrap_err();
    assert!(matches!(e, AdmissionError::Refused(_)), "{e}");
    // The classification is checked per destination.
    let e = t
        .admit(
            JobAsk {
                classification: Some("pii"),
                ..ask(both, None)
            },
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("may not receive \"pii\""), "{e}");
    // And the source last: allowed destinations, a source outside.
    let outside = root.path().join("elsewhere");
    let e = t.admit(ask(both, Some(&outside)), None).unwrap_err();
    assert!(e.to_string().contains("source"), "{e}");
}

fn ask<'a>(destinations: &'a [String], source: Option<&'a Path>) -> JobAsk<'a> {
    JobAsk {
        source,
        destinations,
        classification: None,
    }
}
