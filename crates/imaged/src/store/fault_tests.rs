//! Faults on disk the store must survive or refuse by name: a snapshot sled
//! never finished, a damaged journal and its repair, and a data directory or
//! file that others could change.

use std::os::unix::fs::{FileExt, PermissionsExt};

use super::tests::{assert_holds, copy_disk_state, image, ns, open, revision, snapshot_lsn};
use super::*;

/// A store holding 20 images, closed, and the images in name order.
async fn closed_store(root: &Path) -> Vec<Image> {
    let store = open(root);
    let mut stored = Vec::new();
    for n in 0..20u64 {
        let img = image(&format!("img{n:02}"), n + 1, &[("k", "v")]);
        stored.push(store.put(ns("default"), img, Precondition::None).await.unwrap());
    }
    store.close().await;
    stored
}

#[tokio::test]
async fn a_snapshot_sled_never_finished_is_removed_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let stored = closed_store(&root).await;
    // Reopened once more, so sled has written a finished snapshot.
    open(&root).close().await;
    let lsn = snapshot_lsn(&root);
    assert!(lsn > 0, "no snapshot written");
    // What a kill (or a full disk) in the middle of sled's next snapshot
    // leaves: the first half of it, under a later LSN, never renamed.
    let sled = root.join("sled");
    let whole = std::fs::read(sled.join(format!("snap.{lsn:016X}"))).unwrap();
    let unfinished = sled.join(format!("snap.{:016X}.generating", lsn + 4096));
    std::fs::write(&unfinished, &whole[..whole.len() / 2]).unwrap();
    // Without its removal sled itself refuses the directory.
    let copy = dir.path().join("copy");
    copy_disk_state(&sled, &copy);
    let refused = sled::Config::new().path(&copy).open().map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("corrupt"), "{refused}");

    let store = open(&root);
    assert!(!unfinished.exists());
    assert_holds(&store, &stored, 20).await;
}

#[tokio::test]
async fn a_damaged_journal_entry_with_acknowledged_entries_after_it_is_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = open(&live);
    for n in 0..10u64 {
        let img = image(&format!("img{n:02}"), n + 1, &[]);
        store.put(ns("default"), img, Precondition::None).await.unwrap();
    }
    // As a kill leaves it: sled has not written these out, the journal has.
    let crashed = dir.path().join("crashed");
    copy_disk_state(&live, &crashed);
    drop(store);
    let chain = Journal::open(&crashed.join("journal")).unwrap().1;
    assert!(chain.entries.len() >= 3, "{} entries", chain.entries.len());
    let first_len = chain.entries[0].encode().len();
    let second = &chain.entries[1];
    let journal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(crashed.join("journal"))
        .unwrap();
    // One bit of the second entry's payload flips.
    let mut byte = [0u8];
    journal.read_at(&mut byte, first_len as u64 + 30).unwrap();
    journal.write_at(&[byte[0] ^ 0x10], first_len as u64 + 30).unwrap();

    let err = Store::open(&crashed, &StoreOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("the entry at offset {first_len} is damaged")),
        "{err}"
    );
    assert!(err.contains("imaged repair"), "{err}");
    // Refusing changed nothing: the same refusal again, and a look at it
    // alone changes nothing either.
    let options = StoreOptions::default();
    let look = repair(&crashed, &options, false).unwrap();
    let last = chain.entries.last().unwrap().last;
    let kept = chain.entries[0].last;
    assert_eq!(
        look,
        Repair {
            keeps: kept,
            loses: Some((second.first, last)),
            repaired: false
        }
    );
    assert!(Store::open(&crashed, &options).is_err());

    let made = repair(&crashed, &options, true).unwrap();
    assert!(made.repaired);
    assert_eq!(made.loses, Some((second.first, last)));
    let repaired = open(&crashed);
    assert_eq!(revision(&repaired), kept);
    assert_eq!(repaired.image_count().unwrap(), kept);
    assert!(repaired.check().await.unwrap().problems.is_empty());
    // A whole journal needs nothing.
    repaired.close().await;
    drop(repaired);
    assert_eq!(repair(&crashed, &options, false).unwrap().loses, None);
}

#[tokio::test]
async fn a_data_dir_others_can_write_or_a_planted_link_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    closed_store(&root).await;

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = Store::open(&root, &StoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains("writable by its group or others (mode 0770)"), "{err}");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();

    // The journal swapped for a link to a file elsewhere: refused, and the
    // file linked to is untouched.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"precious").unwrap();
    std::fs::rename(root.join("journal"), dir.path().join("journal.real")).unwrap();
    std::os::unix::fs::symlink(&target, root.join("journal")).unwrap();
    let err = Store::open(&root, &StoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(err.contains("journal"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    std::fs::remove_file(root.join("journal")).unwrap();
    std::fs::rename(dir.path().join("journal.real"), root.join("journal")).unwrap();

    // A link among sled's files.
    std::os::unix::fs::symlink(&target, root.join("sled").join("snap.FFFFFFFFFFFFFFFF")).unwrap();
    let err = Store::open(&root, &StoreOptions::default()).err().unwrap().to_string();
    assert!(
        err.contains("symbolic link") && err.contains("snap.FFFFFFFFFFFFFFFF"),
        "{err}"
    );
    std::fs::remove_file(root.join("sled").join("snap.FFFFFFFFFFFFFFFF")).unwrap();
    assert_eq!(open(&root).image_count().unwrap(), 20);
}
