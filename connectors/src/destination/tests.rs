//! Tests of destination parsing: what is refused, canonical forms, prefix checks.

use super::*;

fn p(s: &str) -> Destination {
    Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn refused(s: &str, needle: &str) {
    match Destination::parse(s) {
        Ok(d) => panic!("{s} was accepted as {d}"),
        Err(e) => assert!(e.0.contains(needle), "{s}: {e} (wanted {needle:?})"),
    }
}

#[test]
fn parses_every_scheme() {
    let d = p("file:///srv/in/acme/");
    assert_eq!(d.scheme(), Scheme::File);
    assert_eq!(d.segments(), ["srv", "in", "acme"]);
    assert_eq!(d.to_string(), "file:///srv/in/acme");
    let d = p("s3://bucket.x/a/b?region=eu&endpoint=http://127.0.0.1:9000");
    assert_eq!(d.authority(), &Authority::Container("bucket.x".into()));
    assert_eq!(d.option("endpoint"), Some("http://127.0.0.1:9000"));
    let d = p("sftp://me@Example.COM:2222/up/load?connections=2");
    assert_eq!(
        d.authority(),
        &Authority::Server {
            user: "me".into(),
            host: "example.com".into(),
            port: 2222
        }
    );
    let d = p("ftps://me@[::1]/x");
    assert_eq!(d.to_string(), "ftps://me@[::1]/x");
    assert_eq!(p("null://").to_string(), "null://");
    assert_eq!(p("file:///").segments().len(), 0);
    assert_eq!(p("file:///a%20b/%23").segments(), ["a b", "#"]);
}

#[test]
fn refuses_what_is_ambiguous() {
    refused("file:///X/allowed/#/../../outside", "'#'");
    refused("file:///X/allowed/?/../../outside", "setting");
    refused("file:///X/allowed/../outside", "\"..\"");
    refused("file:///X/./a", "\".\"");
    refused("file:///X/%2e%2e/a", "percent-encoded '.'");
    refused("file:///X/%2E/a", "percent-encoded '.'");
    refused("file:///X/a%2fb", "percent-encoded '/'");
    refused("file:///X/a%5cb", "percent-encoded '\\'");
    refused("file:///X/a%00b", "NUL");
    refused("file:///X/a\\b", "backslash");
    refused("file:///X//a", "empty path segment");
    refused("file:///X/a%zz", "malformed percent escape");
    refused("file:///X/a%ff", "not UTF-8");
    refused("file:///X/a\u{7}", "control character");
    refused("file:///X/a%0a", "control character");
    refused("file://host/X", "takes no host");
    refused("file://relative", "takes no host");
    refused("file:", "SCHEME://");
    refused("gopher://x", "unsupported destination scheme");
    refused("FILE:///x", "unsupported destination scheme");
    refused("file:///X/.a.b.tspart", "reserves");
    refused("file:///X/.trackshift-tmp", "reserves");
    refused("s3://Bucket/x", "bucket name");
    refused("s3://b..c/x", "bucket name");
    refused("s3://key:secret@b/x", "credentials");
    refused("s3://b/x?secret_access_key=abc", "unknown or secret");
    refused("az://c/x?account_key=abc", "unknown or secret");
    refused("s3://b/x?region=a&region=b", "twice");
    refused("s3://b/x?region=", "no value");
    refused("s3://b/x?", "empty query");
    refused("sftp://u:pw@h/x", "passwords do not belong");
    refused("sftp://h/x", "needs a user");
    refused("sftp://u@h:0/x", "port");
    refused("sftp://u@h:99999/x", "port");
    refused("sftp://u@h:+22/x", "port");
    refused("null://?overwrite=true", "unknown or secret");
}

#[test]
fn errors_do_not_repeat_passwords() {
    let e = Destination::parse("ftps://u:hunter2@h/x").unwrap_err();
    assert!(!e.0.contains("hunter2"));
}

#[test]
fn within_is_whole_segments_and_authority() {
    let base = p("s3://b/p");
    assert!(p("s3://b/p").is_within(&base));
    assert!(p("s3://b/p/x").is_within(&base));
    assert!(!p("s3://b/px").is_within(&base));
    assert!(!p("s3://b2/p/x").is_within(&base));
    assert!(!p("az://b/p/x").is_within(&base));
    let srv = p("sftp://u@h/d");
    assert!(p("sftp://u@h:22/d/e").is_within(&srv));
    assert!(!p("sftp://v@h/d/e").is_within(&srv));
    assert!(!p("sftp://u@h:23/d/e").is_within(&srv));
}

#[test]
fn rule_options_win_and_trust_stops_at_the_rule() {
    let rule = p("s3://b/in?endpoint=http://127.0.0.1:9000&allow_http=true");
    let job = p("s3://b/in/acme?overwrite=true");
    let eff = job.under_rule(&rule);
    assert_eq!(eff.option("endpoint"), Some("http://127.0.0.1:9000"));
    assert!(eff.overwrite());
    assert_eq!(eff.trusted_segments(), 1);
    assert_eq!(
        eff.options_of(OptionKind::Job).collect::<Vec<_>>(),
        [("overwrite", "true")]
    );
}

#[test]
fn canonical_form_round_trips() {
    for s in [
        "file:///a%20b/%23/%3F/caf%C3%A9",
        "sftp://us%40er@h.example:2222/x?connections=3&overwrite=true",
        "s3://b/p?endpoint=http://127.0.0.1:9000/&region=us-east-1",
        "ftps://u@10.0.0.1/d?ca=/etc/ca%20file.pem",
    ] {
        let d = Destination::parse(s);
        // '@' in a user name is refused; the rest round-trip.
        let Ok(d) = d else { continue };
        assert_eq!(p(&d.to_string()), d, "{s} -> {d}");
    }
}

fn piece() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just("#".to_string()),
        Just("?".to_string()),
        Just("&".to_string()),
        Just("=".to_string()),
        Just("\\".to_string()),
        Just("%23".to_string()),
        Just("%3F".to_string()),
        Just("@".to_string()),
        Just(":".to_string()),
        Just(".tspart".to_string()),
        Just("overwrite=true".to_string()),
        Just("endpoint=http://127.0.0.1:9".to_string()),
        "[ -~]{0,3}",
        "\\PC{0,2}",
    ]
}

proptest::proptest! {
    /// For any input: refused, or every segment is a plain name, the destination lies
    /// beneath the prefix it was written under, and its canonical form parses back to it.
    #[test]
    fn anything_accepted_stays_beneath_its_prefix(
        tail in proptest::collection::vec(piece(), 0..12)
    ) {
        let rule = p("file:///X/allowed");
        let s = format!("file:///X/allowed/{}", tail.concat());
        if let Ok(d) = Destination::parse(&s) {
            proptest::prop_assert!(d.is_within(&rule), "{} not within", d);
            for seg in d.segments() {
                proptest::prop_assert!(seg != "." && seg != ".." && !seg.is_empty());
                proptest::prop_assert!(!seg.contains(['/', '\\', '\0']));
            }
            let eff = d.under_rule(&rule);
            let c = crate::LocalConnector::at(&eff).unwrap();
            proptest::prop_assert!(c.root().starts_with("/X/allowed"));
            proptest::prop_assert!(!c.root().components().any(|c| matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )));
            proptest::prop_assert_eq!(Destination::parse(&d.to_string()).unwrap(), d);
        }
    }

    /// Arbitrary text never panics the parser, and what it accepts round-trips.
    #[test]
    fn arbitrary_text_parses_or_is_refused(s in "\\PC{0,64}", scheme in 0usize..6) {
        let s = format!("{}://{s}", Scheme::ALL[scheme].as_str());
        if let Ok(d) = Destination::parse(&s) {
            proptest::prop_assert_eq!(Destination::parse(&d.to_string()).unwrap(), d);
        }
    }
}

#[test]
fn the_default_chunk_size_follows_the_smallest_part_of_each_scheme() {
    assert_eq!(default_chunk_size([]), 4 << 20);
    assert_eq!(default_chunk_size([Scheme::File, Scheme::Null]), 4 << 20);
    assert_eq!(default_chunk_size([Scheme::Azure, Scheme::S3]), 8 << 20);
    // Every scheme's default is a chunk size its own connector accepts for small objects.
    for s in Scheme::ALL {
        let c = default_chunk_size([s]);
        assert!(c.is_power_of_two() && c >= s.min_part_size(), "{s:?}");
    }
}
