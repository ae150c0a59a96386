//! Unit tests of batch planning.

use std::time::{Duration, UNIX_EPOCH};

use imaged_types::{Descriptor, Digest, Image, Labels, NamespaceName, Precondition};
use prost::Message;
use tokio::sync::oneshot;

use super::batch::{self, Job, Pending};
use crate::store::Quotas;
use crate::store::engine::{Backend, Bytes};
use crate::store::layout::{self, ChangeRecord, NamespaceRecord, RepositoryRecord, TreeId};
use crate::store::rules::ImageOp;

fn backend() -> (tempfile::TempDir, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
    (dir, backend)
}

fn create(name: &str, n: u64) -> ImageOp {
    ImageOp::Create {
        ns: NamespaceName::default_namespace(),
        image: Image {
            name: name.into(),
            labels: Labels::new(),
            target: Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: Digest::parse(&format!("sha256:{n:064x}")).unwrap(),
                size: n as i64,
                annotations: Labels::new(),
            },
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
            create_revision: 0,
            mod_revision: 0,
        },
        at: Some(UNIX_EPOCH + Duration::from_secs(n)),
    }
}

fn delete(name: &str) -> ImageOp {
    ImageOp::Delete {
        ns: NamespaceName::default_namespace(),
        name: name.into(),
        precondition: Precondition::None,
    }
}

type Answer = oneshot::Receiver<Result<crate::store::Written, crate::error::Error>>;

fn make_jobs(ops: Vec<ImageOp>) -> (Vec<Job>, Vec<Answer>) {
    ops.into_iter()
        .map(|op| {
            let (tx, rx) = oneshot::channel();
            (Job::Image(Pending::new(op, tx, crate::shares::Caller::DAEMON)), rx)
        })
        .unzip()
}

/// Every tree's entries; the change log's and the repositories' without
/// the time of each change, which differs between two runs of the same ops.
fn dump(backend: &Backend) -> Vec<Vec<(Bytes, Bytes)>> {
    TreeId::ALL
        .iter()
        .map(|&tree| {
            let entries = backend.iter(tree).map(Result::unwrap);
            entries
                .map(|(key, value)| match tree {
                    TreeId::Changes => {
                        let mut entry = ChangeRecord::decode(&*value).unwrap();
                        entry.unix_nanos = 0;
                        (key, Bytes::from(entry.encode_to_vec()))
                    }
                    TreeId::Index if key.first() == Some(&layout::index::REPOSITORY) => {
                        let mut record = RepositoryRecord::decode(&*value).unwrap();
                        record.updated_at = 0;
                        (key, Bytes::from(record.encode_to_vec()))
                    }
                    _ => (key, value),
                })
                .collect()
        })
        .collect()
}

fn ops() -> Vec<ImageOp> {
    vec![
        create("a", 1),
        create("b", 2),
        create("c", 3),
        delete("b"),
        create("b", 4),
        delete("c"),
    ]
}

#[test]
fn a_key_written_twice_in_a_batch_is_journaled_once_with_its_final_value() {
    let (_dir, batched) = backend();
    let (mut jobs, answers) = make_jobs(ops());
    let plan = batch::plan(&batched, jobs.iter_mut(), 0, Quotas::NONE, None);
    assert_eq!(plan.planned, 6);
    for job in jobs {
        job.answer(None);
    }
    for mut answer in answers {
        answer.try_recv().unwrap().unwrap();
    }
    let entry = plan.entry.unwrap();
    for (i, effect) in entry.effects.iter().enumerate() {
        let again = entry.effects[i + 1..]
            .iter()
            .any(|e| e.tree == effect.tree && e.key == effect.key);
        assert!(!again, "{:?} {:?} is written twice", effect.tree, effect.key);
    }
    let namespace: Vec<_> = entry.effects.iter().filter(|e| e.tree == TreeId::Namespaces).collect();
    assert_eq!(namespace.len(), 1);
    let record = NamespaceRecord::decode(namespace[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(record.images, 2);
    batched.apply(&entry.effects, |_| {}).unwrap();

    // The same ops one batch each end in exactly the same trees.
    let (_dir2, one_by_one) = backend();
    for (revision, op) in ops().into_iter().enumerate() {
        let (mut jobs, _answers) = make_jobs(vec![op]);
        let entry = batch::plan(&one_by_one, jobs.iter_mut(), revision as u64, Quotas::NONE, None)
            .entry
            .unwrap();
        one_by_one.apply(&entry.effects, |_| {}).unwrap();
    }
    assert_eq!(dump(&batched), dump(&one_by_one));
}

#[test]
fn the_changes_of_a_batch_name_their_revisions_and_both_sides() {
    let (_dir, backend) = backend();
    let (mut jobs, _answers) = make_jobs(vec![create("a", 1), delete("a"), delete("missing")]);
    let mut changes = Vec::new();
    let plan = batch::plan(&backend, jobs.iter_mut(), 10, Quotas::NONE, Some(&mut changes));
    let entry = plan.entry.unwrap();
    assert_eq!((entry.first, entry.last), (11, 12));
    // The refused delete changed nothing, so it has no change.
    assert_eq!(changes.len(), 2);
    let revisions: Vec<_> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, [11, 12]);
    match (&changes[0].changed, &changes[1].changed) {
        (
            crate::store::rules::Changed::Image {
                before: None,
                after: Some(created),
                ..
            },
            crate::store::rules::Changed::Image {
                before: Some(deleted),
                after: None,
                ..
            },
        ) => assert_eq!(created, deleted),
        other => panic!("unexpected changes {other:?}"),
    }
    assert!(changes.iter().all(|c| c.namespace.as_str() == "default"));
}

#[test]
fn a_uid_that_journaled_far_more_waits_while_others_write_and_never_when_alone() {
    use super::fair::{QUANTUM, Turns};
    use crate::shares::Caller;
    let job = |name: &str, uid: u32| {
        let (tx, _rx) = oneshot::channel();
        Job::Image(Pending::new(create(name, 1), tx, Caller { uid, admin: false }))
    };
    let mut turns = Turns::default();
    // Alone, the heavy writer goes, however much it owes.
    let mut pending = vec![job("heavy:1", 1)];
    assert_eq!(turns.choose(&mut pending), 1);
    turns.charge(1, 130 * 1024);
    // With another uid waiting, it waits while its debt runs down, one
    // quantum a round; the light writer goes every round, in its order.
    let mut rounds = 0;
    loop {
        let mut pending = vec![job("heavy:2", 1), job("light:a", 2), job("light:b", 2)];
        let taken = turns.choose(&mut pending);
        if pending[..taken].iter().any(|j| j.flow() == 1) {
            break;
        }
        assert_eq!(taken, 2);
        assert!(pending[..2].iter().all(|j| j.flow() == 2));
        turns.charge(2, 2 * 1024);
        rounds += 1;
        assert!(rounds < 1000, "the heavy writer never got a turn");
    }
    let owed = (130 * 1024) as i64;
    assert!(
        rounds >= owed / QUANTUM - 1 && rounds <= owed / QUANTUM + 1,
        "{rounds} rounds"
    );
}
