//! `trackshift send` through a running gateway to every remote destination kind (S3 on moto,
//! Azure Blob on Azurite, SFTP on sshd, FTPS on vsftpd, started by `scripts/test-servers.sh`), in strict mode: the objects
//! hold exactly the files, and the signed receipt verifies.

mod common;

use std::path::Path;

use common::run;

use trackshift_connectors::{VerifyMode, from_uri_with};

fn server(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with ./scripts/test.sh (it starts the servers)")
    })
}

fn write_tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        ("a.txt", b"hello, object store\n".to_vec()),
        ("empty", Vec::new()),
        (
            "sub/big.bin",
            (0..(20u32 << 20) + 12_345)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ];
    for (p, data) in &files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    files
}

#[test]
fn sends_reach_every_remote_destination_through_the_gateway_in_strict_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_tree(&dir.join("src"));
    let vars = [
        "TRACKSHIFT_TEST_S3",
        "TRACKSHIFT_TEST_AZURE",
        "TRACKSHIFT_TEST_SFTP",
        "TRACKSHIFT_TEST_FTPS",
    ];
    // The operator allows the default tenant each server, with its settings (host key
    // pin, CA file) in the rule; jobs name only paths.
    let mut args = Vec::new();
    for v in vars {
        args.push("--default-dest".to_string());
        args.push(server(v));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = common::start_gateway_full(
        &dir.join("gw"),
        &[("CONNECTOR_STRICT", "true")],
        &args,
        None,
    );
    let token = dir.join("gw/default.token");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, var) in [
        ("s3", "TRACKSHIFT_TEST_S3"),
        ("azure", "TRACKSHIFT_TEST_AZURE"),
        ("sftp", "TRACKSHIFT_TEST_SFTP"),
        ("ftps", "TRACKSHIFT_TEST_FTPS"),
    ] {
        let sub = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let dest = common::job_dest(&server(var), &sub);
        let full = common::under(&server(var), &sub);
        let out_dir = format!("receipts/{name}");
        let send = |extra: &[&str]| {
            let mut args = common::send_args(&gw, &token, "src", &[&dest], Some(&out_dir));
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, dir)
        };
        let (code, out, err) = send(&[]);
        assert_eq!(code, 0, "{name}: {out}\n{err}");

        // Every object holds exactly its file.
        let c = from_uri_with(&full, VerifyMode::Size).unwrap();
        for (path, data) in &files {
            let (size, hash) = rt
                .block_on(c.read_back(path))
                .unwrap_or_else(|e| panic!("{name} {path}: {e}"));
            assert_eq!(size, data.len() as u64, "{name} {path}");
            assert_eq!(hash, *blake3::hash(data).as_bytes(), "{name} {path}");
        }

        // Chunks too small for S3's part limits are refused up front, with the fix named.
        if name == "s3" {
            let (code, out, err) = send(&["--chunk-size", "1MiB"]);
            assert_ne!(code, 0, "{out}");
            assert!(err.contains("at least 8388608"), "{err}");
        }
    }
    // One job fanned out to all four: the data crosses the network once, each destination
    // holds it and has its own receipt.
    let fan: Vec<(String, String)> = vars
        .iter()
        .map(|v| {
            let sub = format!("fan-{}", uuid::Uuid::new_v4().simple());
            (
                common::job_dest(&server(v), &sub),
                common::under(&server(v), &sub),
            )
        })
        .collect();
    let dests: Vec<&str> = fan.iter().map(|(j, _)| j.as_str()).collect();
    let fan_dests: Vec<String> = fan.iter().map(|(_, f)| f.clone()).collect();
    let fan = common::send_args(&gw, &token, "src", &dests, Some("receipts/fan-out"));
    let fan: Vec<&str> = fan.iter().map(String::as_str).collect();
    let (code, out, err) = run(&fan, dir);
    assert_eq!(code, 0, "fan-out: {out}\n{err}");
    for d in &fan_dests {
        let c = from_uri_with(d, VerifyMode::Size).unwrap();
        let (size, hash) = rt.block_on(c.read_back("sub/big.bin")).unwrap();
        assert_eq!(size, files[2].1.len() as u64, "{d}");
        assert_eq!(hash, *blake3::hash(&files[2].1).as_bytes(), "{d}");
    }

    // The receipts verify with the gateway's public keys.
    let (code, _, err) = run(
        &[
            "keys",
            "export-public",
            "--dir",
            dir.join("gw/keys").to_str().unwrap(),
            "--out",
            "pk.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let mut receipts: Vec<_> = std::fs::read_dir(dir.join("receipts"))
        .unwrap()
        .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("receipt")
        })
        .collect();
    receipts.sort();
    assert_eq!(receipts.len(), 8, "{receipts:?}");
    for r in receipts {
        let (code, out, err) = run(
            &["verify", r.to_str().unwrap(), "--public-keys", "pk.json"],
            dir,
        );
        assert_eq!(code, 0, "{out}\n{err}");
    }
}

#[test]
fn a_tenant_sends_with_its_own_credentials_and_never_with_the_gateways() {
    use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/note.txt"), b"tenant credentials\n").unwrap();
    // acme's credentials file holds what the test servers need; the gateway process has
    // none of them in its environment.
    let mut creds = String::from("# acme's destinations\n");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        "TRACKSHIFT_SFTP_KEY",
    ] {
        if let Ok(v) = std::env::var(var) {
            creds.push_str(&format!("{var}={v}\n"));
        }
    }
    common::write_secret(&dir.join("acme.env"), &creds);
    let data = dir.join("gw");
    let rules = Some(vec![
        DestinationRule::from_uri(&server("TRACKSHIFT_TEST_SFTP")).unwrap(),
        DestinationRule::from_uri(&server("TRACKSHIFT_TEST_S3")).unwrap(),
    ]);
    TenantFile {
        tenants: vec![
            TenantEntry {
                credentials: Some(dir.join("acme.env")),
                destinations: rules.clone(),
                ..TenantEntry::new("acme", "acme-token-0123456789")
            },
            TenantEntry {
                destinations: rules,
                ..TenantEntry::new("beta", "beta-token-0123456789")
            },
        ],
    }
    .save(&data)
    .unwrap();
    common::write_secret(&dir.join("acme.token"), "acme-token-0123456789");
    common::write_secret(&dir.join("beta.token"), "beta-token-0123456789");
    let gw = common::start_gateway_without_credentials(&data, &[]);
    let (sftp_sub, s3_sub) = (
        format!("tc-{}", uuid::Uuid::new_v4().simple()),
        format!("tc-{}", uuid::Uuid::new_v4().simple()),
    );
    let sftp = common::job_dest(&server("TRACKSHIFT_TEST_SFTP"), &sftp_sub);
    let s3 = common::job_dest(&server("TRACKSHIFT_TEST_S3"), &s3_sub);
    let full = |dest: &str| {
        if dest == sftp {
            common::under(&server("TRACKSHIFT_TEST_SFTP"), &sftp_sub)
        } else {
            common::under(&server("TRACKSHIFT_TEST_S3"), &s3_sub)
        }
    };
    let send = |token: &str, dest: &str| {
        let args = common::send_args(&gw, &dir.join(token), "src", &[dest], Some("receipts"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, dir)
    };
    for dest in [&sftp, &s3] {
        let (code, out, err) = send("acme.token", dest);
        assert_eq!(code, 0, "acme to {dest}: {out}{err}");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = from_uri_with(&full(dest), VerifyMode::Size).unwrap();
        let (size, hash) = rt.block_on(c.read_back("note.txt")).unwrap();
        assert_eq!(size, 19);
        assert_eq!(hash, *blake3::hash(b"tenant credentials\n").as_bytes());
    }
    // beta has no credentials of its own, and the gateway's environment has none to lend.
    let (code, out, err) = send("beta.token", &sftp);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("no SSH key"), "{err}");
    assert!(!err.contains("BEGIN OPENSSH"), "no key material in errors");
}
