//! Unit tests of `scan`.

use super::*;

fn write(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn file_hash_is_plain_blake3_for_many_batches() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.bin");
    // 1 KiB chunks: BATCH_BYTES / 1 KiB chunks per batch, so this crosses batch borders.
    let data = write(&p, (BATCH_BYTES as usize) * 2 + 12_345, 7);
    let e = hash_file(&p, "big.bin".into(), 1024).unwrap();
    assert_eq!(e.blake3, Hash32::blake3(&data));
    assert_eq!(e.chunks.len(), data.len().div_ceil(1024));
    let layout = e.layout().unwrap();
    let last = e.chunks.len() - 1;
    assert!(
        layout
            .verify_chunk(last as u64, &data[last * 1024..], &e.chunks[last])
            .is_ok()
    );
}

#[test]
fn directory_scan_is_sorted_relative_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(&dir.path().join("b/z.txt"), 5000, 3);
    let b = write(&dir.path().join("a.txt"), 0, 1);
    let c = write(&dir.path().join("b/c/d.bin"), 4096, 9);
    let entries = scan_path(dir.path(), 1024).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["a.txt", "b/c/d.bin", "b/z.txt"]);
    assert_eq!(entries[0].blake3, Hash32::blake3(&b));
    assert_eq!(entries[1].blake3, Hash32::blake3(&c));
    assert_eq!(entries[2].blake3, Hash32::blake3(&a));
}

#[test]
fn refuses_symlinks_missing_paths_and_bad_chunk_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("f"), 10, 1);
    std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("link")).unwrap();
    assert!(matches!(
        scan_path(dir.path(), 1024),
        Err(ScanError::Unsupported { .. })
    ));
    assert!(matches!(
        scan_path(&dir.path().join("nope"), 1024),
        Err(ScanError::Io { .. })
    ));
    assert!(matches!(
        scan_path(&dir.path().join("f"), 1000),
        Err(ScanError::Crypto(_))
    ));
}

fn confined(root: &Path, rel: &str) -> Confined {
    Confined {
        root: root.to_path_buf(),
        rel: rel.into(),
        keep_out: Vec::new(),
    }
}

/// ROOT/acme (the tenant's source directory) holding job/{a.txt, sub/b.txt}, and
/// ROOT/secret/sub/b.txt outside it, the same size as the tenant's file.
fn tenant_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let acme = dir.path().join("acme");
    write(&acme.join("job/a.txt"), 100, 1);
    write(&acme.join("job/sub/b.txt"), 5000, 2);
    write(&dir.path().join("secret/sub/b.txt"), 5000, 99);
    let secret = dir.path().join("secret");
    (dir, acme, secret)
}

fn read_all(listing: &ConfinedListing, i: usize) -> Result<Vec<u8>, ScanError> {
    let f = listing.open(i)?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut buf).unwrap();
    Ok(buf)
}

#[test]
fn a_confined_listing_names_what_a_plain_one_names() {
    let (_dir, acme, _) = tenant_tree();
    write(&acme.join("job/sub/deeper/c.bin"), 3, 3);
    let plain: Vec<FileSpec> = list_files(&acme.join("job"))
        .unwrap()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let listing = list_confined(&confined(&acme, "job")).unwrap();
    let specs: Vec<FileSpec> = listing.files().map(|(_, f)| f.clone()).collect();
    assert_eq!(specs, plain);
    assert_eq!(specs.len(), 3);
    let i = specs.iter().position(|f| f.path == "sub/b.txt").unwrap();
    let (path, _) = listing.files().nth(i).unwrap();
    assert_eq!(path, acme.join("job/sub/b.txt"));
    assert_eq!(read_all(&listing, i).unwrap(), std::fs::read(path).unwrap());
    // A single file keeps its own name, and the root itself can be the source.
    let one = list_confined(&confined(&acme, "job/sub/b.txt")).unwrap();
    assert_eq!(one.files().next().unwrap().1.path, "b.txt");
    assert_eq!(
        list_confined(&confined(&acme, "")).unwrap().files().count(),
        3
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_after_listing_is_not_followed() {
    let (_dir, acme, secret) = tenant_tree();
    let listing = list_confined(&confined(&acme, "job")).unwrap();
    let b = listing
        .files()
        .position(|(_, f)| f.path == "sub/b.txt")
        .unwrap();
    std::fs::rename(acme.join("job/sub"), acme.join("job/sub.old")).unwrap();
    std::os::unix::fs::symlink(secret.join("sub"), acme.join("job/sub")).unwrap();
    let e = read_all(&listing, b).unwrap_err();
    assert!(matches!(e, ScanError::NotAllowed { .. }), "{e:?}");
    assert!(e.to_string().contains("not allowed"), "{e}");
    // The whole job directory swapped: the same.
    std::fs::rename(acme.join("job"), acme.join("job.old")).unwrap();
    std::os::unix::fs::symlink(&secret, acme.join("job")).unwrap();
    for i in 0..2 {
        assert!(matches!(
            read_all(&listing, i),
            Err(ScanError::NotAllowed { .. })
        ));
    }
    // And a listing made now refuses the link as well.
    assert!(matches!(
        list_confined(&confined(&acme, "job")),
        Err(ScanError::NotAllowed { .. })
    ));
}

#[test]
fn a_file_swapped_after_listing_is_not_read() {
    let (_dir, acme, secret) = tenant_tree();
    let listing = list_confined(&confined(&acme, "job")).unwrap();
    let b = acme.join("job/sub/b.txt");
    // The listed file is kept (its inode number cannot be reused meanwhile).
    std::fs::rename(&b, acme.join("job/b.orig")).unwrap();
    // For a symbolic link to a file outside.
    std::os::unix::fs::symlink(secret.join("sub/b.txt"), &b).unwrap();
    assert!(matches!(
        read_all(&listing, 1),
        Err(ScanError::NotAllowed { .. })
    ));
    // For another file (a hard link to one outside, or any other inode).
    std::fs::remove_file(&b).unwrap();
    std::fs::hard_link(secret.join("sub/b.txt"), &b).unwrap();
    assert!(matches!(read_all(&listing, 1), Err(ScanError::Changed(_))));
    std::fs::remove_file(&b).unwrap();
    write(&b, 5000, 5);
    assert!(matches!(read_all(&listing, 1), Err(ScanError::Changed(_))));
    // For a FIFO: refused at once, the read does not block.
    std::fs::remove_file(&b).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &b,
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert!(matches!(read_all(&listing, 1), Err(ScanError::Changed(_))));
    assert!(matches!(
        list_confined(&confined(&acme, "job")),
        Err(ScanError::Unsupported { .. })
    ));
    // The untouched file still reads.
    assert_eq!(read_all(&listing, 0).unwrap().len(), 100);
}

#[test]
fn hard_links_in_a_confined_source_are_refused() {
    let (_dir, acme, secret) = tenant_tree();
    std::fs::hard_link(secret.join("sub/b.txt"), acme.join("job/hl")).unwrap();
    let e = list_confined(&confined(&acme, "job")).unwrap_err();
    assert!(matches!(e, ScanError::NotAllowed { .. }), "{e:?}");
    assert!(e.to_string().contains("hard links"), "{e}");
    // A link made after the listing, to a listed file, is refused at the read.
    std::fs::remove_file(acme.join("job/hl")).unwrap();
    let listing = list_confined(&confined(&acme, "job")).unwrap();
    std::fs::hard_link(acme.join("job/a.txt"), secret.join("a-again")).unwrap();
    assert!(matches!(
        read_all(&listing, 0),
        Err(ScanError::NotAllowed { .. })
    ));
}

#[test]
fn a_confined_walk_never_enters_the_data_directory() {
    let (_dir, acme, _) = tenant_tree();
    let data = acme.join("job/sub/gw");
    write(&data.join("service.key"), 32, 4);
    let mut c = confined(&acme, "job");
    c.keep_out = vec![data.clone()];
    for c in [
        c.clone(),
        Confined {
            rel: "job/sub".into(),
            ..c.clone()
        },
        Confined {
            rel: "job/sub/gw".into(),
            ..c.clone()
        },
    ] {
        let e = list_confined(&c).unwrap_err();
        assert!(e.to_string().contains("data directory"), "{e}");
        assert!(
            matches!(c.probe(), Err(ScanError::NotAllowed { .. })),
            "{c:?}"
        );
    }
    // Elsewhere in the tree it is no obstacle.
    assert!(
        list_confined(&Confined {
            rel: "job/a.txt".into(),
            ..c
        })
        .is_ok()
    );
}

#[test]
fn dot_dot_and_absolute_paths_do_not_leave_the_root() {
    let (_dir, acme, _) = tenant_tree();
    for rel in ["../secret", "job/../../secret/sub/b.txt", "/etc/passwd"] {
        let e = list_confined(&confined(&acme, rel)).unwrap_err();
        assert!(matches!(e, ScanError::NotAllowed { .. }), "{rel}: {e:?}");
    }
}
