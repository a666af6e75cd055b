//! Proofs against the published RFC 6962 vectors (transparency-dev/merkle) and, for every
//! index and every pair of sizes of real logs, against an independent reference
//! implementation of RFC 9162's Merkle tree hash written here from the RFC.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use sha2_ref::sha256;
use trackshift_ledger::{Ledger, LedgerError, verify_consistency, verify_inclusion};

/// A tiny SHA-256 front end so the reference below does not share code with the ledger.
mod sha2_ref {
    pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }
}

/// RFC 9162 §2.1.1 MTH, recursively, straight from the definition.
fn mth(leaves: &[Vec<u8>]) -> [u8; 32] {
    match leaves.len() {
        0 => sha256(&[]),
        1 => sha256(&[&[0], &leaves[0]]),
        n => {
            let k = n.next_power_of_two() / 2;
            let k = if k == n { n / 2 } else { k };
            sha256(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

fn h32(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

#[derive(serde::Deserialize)]
struct Vectors {
    leaves: Vec<String>,
    roots: Vec<String>,
    inclusion: Vec<Inclusion>,
    consistency: Vec<Consistency>,
    happy_path_file: HappyPath,
}
#[derive(serde::Deserialize)]
struct Inclusion {
    leaf: u64,
    size: u64,
    proof: Vec<String>,
}
#[derive(serde::Deserialize)]
struct Consistency {
    size1: u64,
    size2: u64,
    proof: Vec<String>,
}
#[derive(serde::Deserialize)]
struct HappyPath {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Vec<String>,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("data/rfc6962-vectors.json")).unwrap()
}

fn ledger_with(dir: &std::path::Path, leaves: &[Vec<u8>], batch: usize) -> Ledger {
    let l = Ledger::open(dir, "test.example/log").unwrap();
    for chunk in leaves.chunks(batch.max(1)) {
        l.append_blocking(chunk.to_vec()).unwrap();
    }
    l
}

#[test]
fn roots_and_proofs_match_the_published_vectors() {
    let v = vectors();
    let leaves: Vec<Vec<u8>> = v.leaves.iter().map(|l| hex::decode(l).unwrap()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger_with(tmp.path(), &leaves, 3);
    assert_eq!(l.size(), 8);
    for (k, root) in v.roots.iter().enumerate() {
        assert_eq!(
            l.root_at(k as u64 + 1).unwrap(),
            h32(root),
            "root of size {}",
            k + 1
        );
        assert_eq!(
            mth(&leaves[..=k]),
            h32(root),
            "reference root of size {}",
            k + 1
        );
    }
    for t in &v.inclusion {
        let proof: Vec<[u8; 32]> = t.proof.iter().map(|p| h32(p)).collect();
        let index = t.leaf - 1;
        assert_eq!(
            l.inclusion_proof(index, t.size).unwrap(),
            proof,
            "{index}/{}",
            t.size
        );
        let leaf = trackshift_ledger::leaf_hash(&leaves[index as usize]);
        let root = h32(&v.roots[t.size as usize - 1]);
        verify_inclusion(index, t.size, &leaf, &proof, &root).unwrap();
        for (i, bad) in corrupt_inclusion(index, t.size, &proof, &root, &leaf) {
            assert!(
                verify_inclusion(bad.0, bad.1, &bad.3, &bad.2, &bad.4).is_err(),
                "{i} verified for {index}/{}",
                t.size
            );
        }
    }
    for t in &v.consistency {
        let proof: Vec<[u8; 32]> = t.proof.iter().map(|p| h32(p)).collect();
        assert_eq!(l.consistency_proof(t.size1, t.size2).unwrap(), proof);
        let r1 = h32(&v.roots[t.size1 as usize - 1]);
        let r2 = h32(&v.roots[t.size2 as usize - 1]);
        verify_consistency(t.size1, t.size2, &r1, &r2, &proof).unwrap();
        if proof.is_empty() {
            continue;
        }
        for (what, (s1, s2, a, b, p)) in corrupt_consistency(t.size1, t.size2, &r1, &r2, &proof) {
            assert!(
                verify_consistency(s1, s2, &a, &b, &p).is_err(),
                "{what} verified for {}->{}",
                t.size1,
                t.size2
            );
        }
    }
    let hp = &v.happy_path_file;
    let b = |s: &str| -> [u8; 32] { B64.decode(s).unwrap().try_into().unwrap() };
    let proof: Vec<[u8; 32]> = hp.proof.iter().map(|p| b(p)).collect();
    verify_consistency(hp.size1, hp.size2, &b(&hp.root1), &b(&hp.root2), &proof).unwrap();
    assert_eq!(l.consistency_proof(hp.size1, hp.size2).unwrap(), proof);
}

type InclusionProbe = (u64, u64, Vec<[u8; 32]>, [u8; 32], [u8; 32]);

/// The corruptions of transparency-dev/merkle's `corruptInclusionProof`.
fn corrupt_inclusion(
    index: u64,
    size: u64,
    proof: &[[u8; 32]],
    root: &[u8; 32],
    leaf: &[u8; 32],
) -> Vec<(String, InclusionProbe)> {
    let p = proof.to_vec();
    let some = [0xab; 32];
    let mut out = vec![
        (
            "index - 1".to_string(),
            (index.wrapping_sub(1), size, p.clone(), *leaf, *root),
        ),
        (
            "index + 1".into(),
            (index + 1, size, p.clone(), *leaf, *root),
        ),
        (
            "index ^ 2".into(),
            (index ^ 2, size, p.clone(), *leaf, *root),
        ),
        (
            "size * 2".into(),
            (index, size * 2, p.clone(), *leaf, *root),
        ),
        (
            "size / 2".into(),
            (index, size / 2, p.clone(), *leaf, *root),
        ),
        ("wrong leaf".into(), (index, size, p.clone(), some, *root)),
        ("random root".into(), (index, size, p.clone(), *leaf, some)),
        (
            "trailing root".into(),
            (index, size, [p.clone(), vec![*root]].concat(), *leaf, *root),
        ),
        (
            "preceding root".into(),
            (index, size, [vec![*root], p.clone()].concat(), *leaf, *root),
        ),
    ];
    for i in 0..p.len() {
        let mut w = p.clone();
        w[i][0] ^= 8;
        out.push((
            format!("modified proof[{i}]"),
            (index, size, w, *leaf, *root),
        ));
    }
    if !p.is_empty() {
        out.push((
            "removed component".into(),
            (index, size, p[..p.len() - 1].to_vec(), *leaf, *root),
        ));
    }
    if p.len() > 1 {
        let w = [vec![p[0], some], p[1..].to_vec()].concat();
        out.push(("inserted component".into(), (index, size, w, *leaf, *root)));
    }
    out
}

type ConsistencyProbe = (u64, u64, [u8; 32], [u8; 32], Vec<[u8; 32]>);

/// The corruptions of transparency-dev/merkle's `corruptConsistencyProof`.
fn corrupt_consistency(
    s1: u64,
    s2: u64,
    r1: &[u8; 32],
    r2: &[u8; 32],
    p: &[[u8; 32]],
) -> Vec<(String, ConsistencyProbe)> {
    let p = p.to_vec();
    let wrong = [0x57; 32];
    let mut out = vec![
        ("size1 - 1".to_string(), (s1 - 1, s2, *r1, *r2, p.clone())),
        ("size1 + 1".into(), (s1 + 1, s2, *r1, *r2, p.clone())),
        ("size1 ^ 2".into(), (s1 ^ 2, s2, *r1, *r2, p.clone())),
        ("size2 * 2".into(), (s1, s2 * 2, *r1, *r2, p.clone())),
        ("size2 / 2".into(), (s1, s2 / 2, *r1, *r2, p.clone())),
        ("wrong root1".into(), (s1, s2, wrong, *r2, p.clone())),
        ("wrong root2".into(), (s1, s2, *r1, wrong, p.clone())),
        ("swapped roots".into(), (s1, s2, *r2, *r1, p.clone())),
        ("empty proof".into(), (s1, s2, *r1, *r2, vec![])),
        (
            "trailing root1".into(),
            (s1, s2, *r1, *r2, [p.clone(), vec![*r1]].concat()),
        ),
        (
            "trailing root2".into(),
            (s1, s2, *r1, *r2, [p.clone(), vec![*r2]].concat()),
        ),
        (
            "preceding root1".into(),
            (s1, s2, *r1, *r2, [vec![*r1], p.clone()].concat()),
        ),
        (
            "preceding root2".into(),
            (s1, s2, *r1, *r2, [vec![*r2], p.clone()].concat()),
        ),
        (
            "preceding proof[0]".into(),
            (s1, s2, *r1, *r2, [vec![p[0]], p.clone()].concat()),
        ),
        (
            "truncated proof".into(),
            (s1, s2, *r1, *r2, p[..p.len() - 1].to_vec()),
        ),
    ];
    for i in 0..p.len() {
        let mut w = p.clone();
        w[i][0] ^= 16;
        out.push((format!("modified proof[{i}]"), (s1, s2, *r1, *r2, w)));
    }
    out
}

#[test]
fn every_index_and_every_pair_of_sizes_verifies_against_the_reference() {
    let leaves: Vec<Vec<u8>> = (0..67u32)
        .map(|i| format!("entry {i} {}", "x".repeat(i as usize % 7)).into_bytes())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    // Odd batch sizes so batch boundaries fall everywhere.
    let l = ledger_with(tmp.path(), &leaves, 5);
    let n = leaves.len() as u64;
    let roots: Vec<[u8; 32]> = (0..=n).map(|s| mth(&leaves[..s as usize])).collect();
    for s in 1..=n {
        assert_eq!(l.root_at(s).unwrap(), roots[s as usize], "root of {s}");
        for i in 0..s {
            let p = l.inclusion_proof(i, s).unwrap();
            let leaf = trackshift_ledger::leaf_hash(&leaves[i as usize]);
            verify_inclusion(i, s, &leaf, &p, &roots[s as usize]).unwrap();
            // The proof is for this index only.
            if s > 1 {
                let other = (i + 1) % s;
                assert!(verify_inclusion(other, s, &leaf, &p, &roots[s as usize]).is_err());
            }
        }
        for m in 1..=s {
            let p = l.consistency_proof(m, s).unwrap();
            verify_consistency(m, s, &roots[m as usize], &roots[s as usize], &p).unwrap();
            if m > 0 && m < s {
                // Not a proof for a different old tree.
                let mut bad = roots[m as usize];
                bad[5] ^= 1;
                assert!(verify_consistency(m, s, &bad, &roots[s as usize], &p).is_err());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary proofs, sizes and roots never panic the verifiers.
    #[test]
    fn verifiers_never_panic(
        index in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..140),
        a in any::<[u8; 32]>(), b in any::<[u8; 32]>(),
    ) {
        let _ = verify_inclusion(index, size, &a, &proof, &b);
        let _ = verify_inclusion(index % 1000, size % 1000, &a, &proof, &b);
        let _ = verify_consistency(old, size, &a, &b, &proof);
        let _ = verify_consistency(old % 1000, size % 1000, &a, &b, &proof);
    }

    /// A single flipped bit anywhere in a valid proof is caught.
    #[test]
    fn a_flipped_bit_is_caught(size in 2u64..40, pick in any::<u64>(), bit in 0usize..256) {
        let leaves: Vec<Vec<u8>> = (0..size).map(|i| i.to_be_bytes().to_vec()).collect();
        let root = mth(&leaves);
        let i = pick % size;
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger_with(tmp.path(), &leaves, 64);
        let mut p = l.inclusion_proof(i, size).unwrap();
        let leaf = trackshift_ledger::leaf_hash(&leaves[i as usize]);
        prop_assert!(verify_inclusion(i, size, &leaf, &p, &root).is_ok());
        let k = (pick as usize / 7) % p.len();
        p[k][bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(i, size, &leaf, &p, &root).is_err());
    }
}

#[test]
fn a_consistency_proof_from_the_empty_tree_is_refused_for_any_roots() {
    // RFC 9162 2.1.4 defines consistency proofs only for 0 < m < n. An empty "proof" from
    // size 0 used to pass for whatever roots it was given.
    let (a, b) = ([0x11; 32], [0x22; 32]);
    for new in [0u64, 1, 7] {
        let err = verify_consistency(0, new, &a, &b, &[]).unwrap_err();
        assert!(matches!(err, LedgerError::Malformed(_)), "{err}");
        assert!(!err.is_verification_failure());
        assert!(err.to_string().contains("0 entries"), "{err}");
        // Even with the empty tree's real root.
        let empty = mth(&[]);
        assert!(verify_consistency(0, new, &empty, &b, &[]).is_err());
    }
    let tmp = tempfile::tempdir().unwrap();
    let leaves: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
    let l = ledger_with(tmp.path(), &leaves, 5);
    assert!(matches!(
        l.consistency_proof(0, 5),
        Err(LedgerError::InvalidRequest(_))
    ));
    l.close();
}

#[test]
fn consistency_sizes_outside_rfc_9162_are_refused_with_the_right_kind_of_error() {
    let tmp = tempfile::tempdir().unwrap();
    let leaves: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i]).collect();
    let l = ledger_with(tmp.path(), &leaves, 3);
    let root = |s: u64| mth(&leaves[..s as usize]);
    let p = l.consistency_proof(3, 9).unwrap();
    verify_consistency(3, 9, &root(3), &root(9), &p).unwrap();
    // Old size above the new one: malformed (exit 2), whatever the proof.
    let err = verify_consistency(9, 3, &root(9), &root(3), &p).unwrap_err();
    assert!(matches!(err, LedgerError::Malformed(_)), "{err}");
    // Equal sizes: equal roots and an empty proof, nothing else.
    verify_consistency(9, 9, &root(9), &root(9), &[]).unwrap();
    let err = verify_consistency(9, 9, &root(9), &root(9), &p).unwrap_err();
    assert!(matches!(err, LedgerError::Malformed(_)), "{err}");
    let err = verify_consistency(9, 9, &root(9), &root(8), &[]).unwrap_err();
    assert!(
        err.is_verification_failure(),
        "a fork is a rejection: {err}"
    );
    // A proof that does not verify is a rejection (exit 1); one longer than any proof is
    // malformed (exit 2).
    let err = verify_consistency(3, 9, &root(4), &root(9), &p).unwrap_err();
    assert!(matches!(err, LedgerError::Proof(_)), "{err}");
    let err = verify_consistency(3, 9, &root(3), &root(9), &p[1..]).unwrap_err();
    assert!(matches!(err, LedgerError::Proof(_)), "{err}");
    let long = vec![[0u8; 32]; trackshift_ledger::proof::MAX_PROOF_HASHES + 1];
    let err = verify_consistency(3, 9, &root(3), &root(9), &long).unwrap_err();
    assert!(matches!(err, LedgerError::Malformed(_)), "{err}");
    l.close();
}
