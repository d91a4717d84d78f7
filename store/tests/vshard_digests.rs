//! The running per-vShard digest (`sm_vshard_digests`) against the pairs it
//! digests: after any mix of writes, overwrites, deletes, bounded bulk
//! deletes, snapshot installs and group removal, each vShard's row equals
//! the digest recomputed from a full scan; a store written before the table
//! existed is backfilled on open.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, TableDefinition};
use shardflow_store::raft_store::{
    DigestSum, Durability, GroupStore, StateMachineExport, StateMachineRead, StoredSnapshot,
};
use shardflow_store::RaftStore;

/// The digest of `vshard` from a full scan of its pairs.
fn scanned(group: &GroupStore, vshard: u16) -> DigestSum {
    group
        .read_state_machine(|sm| {
            let mut digest = DigestSum::default();
            sm.visit_kv(vshard, &mut |key, value| digest.add_pair(key, value))?;
            Ok::<_, shardflow_store::RaftStoreError>(digest)
        })
        .expect("scan")
}

fn running(group: &GroupStore, vshard: u16) -> DigestSum {
    group
        .read_state_machine(|sm| sm.vshard_digest(vshard))
        .expect("digest row")
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn the_running_digest_equals_a_full_scan_after_every_kind_of_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RaftStore::open(dir.path().join("raft.redb")).expect("open");
    let group = store.group(7);
    // Another group in the same file, same vShards: its rows stay apart.
    let other = store.group(8);
    other
        .write_state_machine(Durability::None, |sm| sm.put_kv(1, b"k1", b"other"))
        .expect("other group");
    let vshards = [0u16, 1, 1023];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // What the store should hold, to check the counts as well.
    let mut model: BTreeMap<(u16, Vec<u8>), Vec<u8>> = BTreeMap::new();

    for round in 0..40 {
        group
            .write_state_machine(Durability::None, |sm| {
                for _ in 0..25 {
                    let vshard = vshards[rng.below(3) as usize];
                    let key = format!("k{}", rng.below(30)).into_bytes();
                    if rng.below(4) == 0 {
                        let existed = sm.delete_kv(vshard, &key)?;
                        assert_eq!(existed, model.remove(&(vshard, key)).is_some());
                    } else {
                        let value = vec![rng.below(256) as u8; rng.below(40) as usize];
                        sm.put_kv(vshard, &key, &value)?;
                        model.insert((vshard, key), value);
                    }
                }
                if round % 7 == 6 {
                    // A bounded bulk delete, as a ghost's cleanup makes.
                    let deleted = sm.delete_vshard_keys(1, 5)?;
                    let gone: Vec<_> = (model.keys())
                        .filter(|(v, _)| *v == 1)
                        .take(5)
                        .cloned()
                        .collect();
                    assert_eq!(deleted, gone.len() as u64);
                    for key in gone {
                        model.remove(&key);
                    }
                }
                if round % 11 == 10 {
                    let doomed = vec![b"k3".to_vec(), b"k4".to_vec(), b"absent".to_vec()];
                    sm.delete_keys(0, &doomed)?;
                    for key in doomed {
                        model.remove(&(0, key));
                    }
                }
                Ok::<_, shardflow_store::RaftStoreError>(())
            })
            .expect("write");
        for vshard in vshards {
            let digest = running(&group, vshard);
            assert_eq!(
                digest,
                scanned(&group, vshard),
                "vShard {vshard}, round {round}"
            );
            let held = model.keys().filter(|(v, _)| *v == vshard).count() as u64;
            assert_eq!(digest.key_count, held, "vShard {vshard}, round {round}");
        }
    }
    assert!(!running(&group, 0).is_empty(), "the test wrote something");

    // An aborted transaction leaves the digest as it was.
    let before = running(&group, 0);
    let failed = group.write_state_machine(Durability::None, |sm| {
        sm.put_kv(0, b"k0", b"never")?;
        Err::<(), _>(shardflow_store::RaftStoreError::Invalid {
            group: 7,
            doing: "testing",
            reason: "on purpose".into(),
        })
    });
    assert!(failed.is_err());
    assert_eq!(running(&group, 0), before);

    // Deleting every key of a vShard leaves the empty digest (no row).
    while group
        .write_state_machine(Durability::None, |sm| sm.delete_vshard_keys(1023, 4))
        .expect("bulk delete")
        > 0
    {}
    assert!(running(&group, 1023).is_empty());

    // A snapshot install recomputes the digests from the pairs it carries.
    let state = StateMachineExport {
        kv: vec![
            (1, b"a".to_vec(), b"1".to_vec()),
            (1, b"b".to_vec(), b"2".to_vec()),
            (5, b"c".to_vec(), b"3".to_vec()),
        ],
        ..StateMachineExport::default()
    };
    let snapshot = StoredSnapshot {
        position: 9,
        meta: vec![],
        data: vec![],
    };
    group.install_snapshot(&state, &snapshot).expect("install");
    for vshard in [0, 1, 5, 1023] {
        assert_eq!(
            running(&group, vshard),
            scanned(&group, vshard),
            "vShard {vshard}"
        );
    }
    assert!(
        running(&group, 0).is_empty(),
        "vShard 0 is not in the snapshot"
    );
    assert_eq!(running(&group, 1).key_count, 2);

    // The other group was never touched; removing this one clears its rows.
    assert_eq!(running(&other, 1).key_count, 1);
    assert_eq!(running(&other, 1), scanned(&other, 1));
    group.remove_group().expect("remove");
    assert!(running(&group, 1).is_empty());
    assert_eq!(running(&other, 1).key_count, 1);
}

#[test]
fn a_store_without_digests_is_backfilled_when_opened() {
    const SM_KV: TableDefinition<(u64, u16, &[u8]), &[u8]> = TableDefinition::new("sm_kv");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft.redb");
    {
        // A store as the version before the digests wrote it: pairs, no
        // digest table.
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut kv = txn.open_table(SM_KV).expect("sm_kv");
            for (group, vshard, key, value) in [
                (1u64, 4u16, &b"a"[..], &b"x"[..]),
                (1, 4, b"b", b"y"),
                (2, 4, b"a", b"z"),
            ] {
                kv.insert((group, vshard, key), value).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let store = RaftStore::new(Arc::new(Database::create(&path).expect("open"))).expect("store");
    let (one, two) = (store.group(1), store.group(2));
    assert_eq!(running(&one, 4).key_count, 2);
    assert_eq!(running(&one, 4), scanned(&one, 4));
    assert_eq!(running(&two, 4), scanned(&two, 4));
    assert_ne!(running(&one, 4), running(&two, 4));
    drop((store, one, two));
    // Opening again does not add the pairs a second time.
    let store = RaftStore::open(&path).expect("reopen");
    assert_eq!(running(&store.group(1), 4).key_count, 2);
}
