//! The redb journal's contract: durable atomic appends, optimistic
//! concurrency, chain and cap checks, and typed errors for every kind of bad
//! file (not a journal, newer format, flipped bytes, truncation).

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use shardflow_store::instance_record::{InstanceRecord, InstanceRecordV1};
use shardflow_store::redb_journal::{FORMAT_VERSION, ROW_SEQ};
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::envelope::{genesis_hash, Hash};
use shardflow_workflow::{
    Envelope, EnvelopeV1, Event, Journal, JournalError, Problem, SealedEvent, WorkflowId,
};

const ID: WorkflowId = WorkflowId { node: 1, serial: 1 };
const EVENTS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("journal_events");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_meta");
const INSTANCES_V1: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("journal_instances");
const MARKER: &[u8] = b"MARKER-a1b2c3d4e5f6";

fn chain(first_seq: u64, mut prev: Hash, bodies: Vec<Event>) -> Vec<SealedEvent> {
    let mut sealed = Vec::new();
    for (seq, body) in (first_seq..).zip(bodies) {
        let event = SealedEvent::seal(Envelope::V1(EnvelopeV1 {
            seq,
            at_ms: 1_000 + seq,
            node: 1,
            engine_version: 1,
            definition_version: 1,
            prev_hash: prev,
            body,
        }));
        prev = event.hash;
        sealed.push(event);
    }
    sealed
}

fn start() -> Vec<SealedEvent> {
    chain(
        0,
        genesis_hash(ID),
        vec![
            Event::Submitted {
                kind: "test".into(),
                definition_version: 1,
                input: MARKER.to_vec(),
                plan: vec!["a".into(), "b".into()],
            },
            Event::DriverStarted { epoch: 1 },
            Event::StepStarted {
                step: "a".into(),
                attempt: 1,
            },
        ],
    )
}

fn finish(after: &SealedEvent) -> Vec<SealedEvent> {
    chain(
        3,
        after.hash,
        vec![
            Event::StepSucceeded {
                step: "a".into(),
                output: vec![],
            },
            Event::StepStarted {
                step: "b".into(),
                attempt: 1,
            },
            Event::StepSucceeded {
                step: "b".into(),
                output: vec![],
            },
            Event::Completed,
        ],
    )
}

async fn written_journal(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("journal.redb");
    let journal = RedbJournal::open(&path).expect("create");
    let events = start();
    journal.append(ID, 0, events.clone()).await.expect("append");
    journal
        .append(ID, 3, finish(&events[2]))
        .await
        .expect("append");
    path
}

// Proves appends are durable across a reopen and read back verified, in order.
#[tokio::test]
async fn appends_survive_reopen_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    let journal = RedbJournal::open(&path).expect("reopen");
    let events = journal.read(ID).await.expect("read");
    assert_eq!(events.len(), 7);
    assert!(events.iter().enumerate().all(|(i, e)| e.seq() == i as u64));
    let listed = journal.list(true).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].ended);
    assert_eq!(listed[0].kind, "test");
    assert!(journal.list(false).await.expect("list").is_empty());
    assert_eq!(journal.max_serial(1).await.expect("serial"), 1);
    assert_eq!(journal.max_serial(2).await.expect("serial"), 0);
}

// Proves a stale expected seq, a broken chain and the cap are refused and
// leave the journal as it was.
#[tokio::test]
async fn bad_appends_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = JournalOptions {
        max_events: 5,
        verify_on_open: true,
    };
    let journal = RedbJournal::open_with(dir.path().join("j.redb"), options).expect("create");
    let events = start();
    journal.append(ID, 0, events.clone()).await.expect("append");
    let stale = journal
        .append(ID, 1, finish(&events[2])[..1].to_vec())
        .await;
    assert!(
        matches!(
            stale,
            Err(JournalError::SeqConflict {
                expected: 1,
                actual: 3,
                ..
            })
        ),
        "{stale:?}"
    );
    let unchained = chain(
        3,
        [9; 32],
        vec![Event::StepSucceeded {
            step: "a".into(),
            output: vec![],
        }],
    );
    let broken = journal.append(ID, 3, unchained).await;
    assert!(
        matches!(broken, Err(JournalError::ChainMismatch { seq: 3, .. })),
        "{broken:?}"
    );
    let over = journal
        .append(ID, 3, finish(&events[2])[..3].to_vec())
        .await;
    assert!(
        matches!(over, Err(JournalError::EventCap { cap: 5, .. })),
        "{over:?}"
    );
    assert_eq!(
        journal.read(ID).await.expect("read").len(),
        3,
        "nothing changed"
    );
}

// Proves a file that is not a redb database, and a redb database of
// another program, are refused as not being a shardflow journal.
#[test]
fn foreign_files_are_not_a_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"hello, this is not a database at all").expect("write");
    let refused = RedbJournal::open(&text);
    assert!(
        matches!(refused, Err(JournalError::NotAJournal { .. })),
        "{:?}",
        refused.err()
    );
    let foreign = dir.path().join("other.redb");
    let db = Database::create(&foreign).expect("redb");
    let txn = db.begin_write().expect("txn");
    txn.open_table(TableDefinition::<&str, u64>::new("other"))
        .expect("table");
    txn.commit().expect("commit");
    drop(db);
    let refused = RedbJournal::open(&foreign).err().expect("refused");
    assert!(
        matches!(refused, JournalError::NotAJournal { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("no journal header"),
        "{refused}"
    );
}

// Proves a journal written by a newer format version is refused as such.
#[tokio::test]
async fn newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    write_header(&path, FORMAT_VERSION + 1);
    let refused = RedbJournal::open(&path).err().expect("refused");
    assert!(
        matches!(
            refused,
            JournalError::NewerFormat { found, supported, .. }
                if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION
        ),
        "{refused}"
    );
}

fn write_header(path: &std::path::Path, version: u32) {
    let db = Database::create(path).expect("raw open");
    let txn = db.begin_write().expect("txn");
    {
        let mut meta = txn.open_table(META).expect("meta");
        let mut header = b"shardflow-journal".to_vec();
        header.extend_from_slice(&version.to_le_bytes());
        meta.insert("format", header.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
}

fn header_of(path: &std::path::Path) -> Vec<u8> {
    let db = Database::create(path).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let meta = txn.open_table(META).expect("meta");
    let header = meta.get("format").expect("get").expect("a header");
    header.value().to_vec()
}

fn table_names(path: &std::path::Path) -> Vec<String> {
    use redb::TableHandle;
    let db = Database::create(path).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let names = txn.list_tables().expect("tables");
    names.map(|t| t.name().to_string()).collect()
}

// Proves format 2's layout: a new journal says version 2, has no row table,
// and keeps each instance's row right after its events, at `ROW_SEQ`, with
// the chain head of its last event; listing walks those rows across nodes.
#[tokio::test]
async fn format_2_keeps_the_row_beside_the_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    let mut header = b"shardflow-journal".to_vec();
    header.extend_from_slice(&2u32.to_le_bytes());
    assert_eq!(header_of(&path), header);
    let mut tables = table_names(&path);
    tables.sort();
    assert_eq!(tables, vec!["journal_events", "journal_meta"]);
    let last = finish(&start()[2]).pop().expect("last event");
    {
        let db = Database::create(&path).expect("raw open");
        let txn = db.begin_read().expect("txn");
        let events = txn.open_table(EVENTS).expect("events");
        let row = events.get((1, 1, ROW_SEQ)).expect("get").expect("the row");
        let record = InstanceRecord::decode(row.value()).expect("a row");
        assert_eq!(record.next_seq, 7);
        assert_eq!(record.head, last.hash);
        assert_eq!(record.kind, "test");
        assert!(record.ended);
        assert_eq!(events.len().expect("len"), 8, "7 events and the row");
    }

    // More instances, on two nodes and with a gap in the serials.
    let journal = RedbJournal::open(&path).expect("open");
    assert_eq!(journal.format_version(), 2);
    let submitted = vec![start()[0].envelope.body().clone()];
    for id in [
        WorkflowId::new(1, 5),
        WorkflowId::new(2, 3),
        WorkflowId::new(0, u64::MAX),
    ] {
        let first = chain(0, genesis_hash(id), submitted.clone());
        journal.append(id, 0, first).await.expect("append");
    }
    let listed: Vec<WorkflowId> = (journal.list(true).await.expect("list"))
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        listed,
        vec![
            WorkflowId::new(0, u64::MAX),
            ID,
            WorkflowId::new(1, 5),
            WorkflowId::new(2, 3),
        ]
    );
    assert_eq!(journal.list(false).await.expect("list").len(), 3);
    assert_eq!(journal.max_serial(1).await.expect("serial"), 5);
    assert_eq!(journal.max_serial(2).await.expect("serial"), 3);
    assert_eq!(journal.max_serial(3).await.expect("serial"), 0);
    assert_eq!(journal.read(ID).await.expect("read").len(), 7);
    drop(journal);
    RedbJournal::open(&path).expect("every instance verifies on open");
}

// Proves a format 2 instance whose row is gone is refused, not skipped.
#[tokio::test]
async fn format_2_instance_without_its_row_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    {
        let db = Database::create(&path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(EVENTS)
            .expect("events")
            .remove((1, 1, ROW_SEQ))
            .expect("remove");
        txn.commit().expect("commit");
    }
    match RedbJournal::open(&path).err().expect("refused") {
        JournalError::Corrupt(error) => {
            assert_eq!(error.id, ID);
            assert!(
                error.problem.to_string().contains("instance row"),
                "{error}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// Writes `events` of `ID` as format 1 did: the row in a table of its own.
fn write_format_1(path: &std::path::Path, events: &[SealedEvent]) {
    let db = Database::create(path).expect("raw create");
    let txn = db.begin_write().expect("txn");
    {
        let mut meta = txn.open_table(META).expect("meta");
        let mut header = b"shardflow-journal".to_vec();
        header.extend_from_slice(&1u32.to_le_bytes());
        meta.insert("format", header.as_slice()).expect("header");
        let mut table = txn.open_table(EVENTS).expect("events");
        let mut instances = txn.open_table(INSTANCES_V1).expect("instances");
        let mut record = InstanceRecordV1::empty(events[0].envelope.current().at_ms);
        for event in events {
            table
                .insert((ID.node, ID.serial, event.seq()), event.bytes.as_slice())
                .expect("event");
            record.absorb(event);
        }
        let row = InstanceRecord::V1(record).encode();
        instances
            .insert((ID.node, ID.serial), row.as_slice())
            .expect("row");
    }
    txn.commit().expect("commit");
}

// Proves a format 1 journal is still read, verified (its recorded head
// too), listed, appended to in its own layout and pruned.
#[tokio::test]
async fn format_1_journal_is_read_and_appended_in_its_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.redb");
    let started = start();
    write_format_1(&path, &started);
    let journal = RedbJournal::open(&path).expect("a format 1 journal opens");
    assert_eq!(journal.format_version(), 1);
    assert_eq!(journal.read(ID).await.expect("read").len(), 3);
    let listed = journal.list(false).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].events), (ID, 3));
    assert_eq!(journal.max_serial(1).await.expect("serial"), 1);
    journal
        .append(ID, 3, finish(&started[2]))
        .await
        .expect("append");
    drop(journal);

    let journal = RedbJournal::open(&path).expect("reopen");
    assert_eq!(journal.read(ID).await.expect("read").len(), 7);
    assert!(journal.list(false).await.expect("list").is_empty());
    drop(journal);
    let mut header = b"shardflow-journal".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(header_of(&path), header, "the file keeps its format");
    {
        let db = Database::create(&path).expect("raw open");
        let txn = db.begin_read().expect("txn");
        let events = txn.open_table(EVENTS).expect("events");
        assert!(events.get((1, 1, ROW_SEQ)).expect("get").is_none());
        assert_eq!(events.len().expect("len"), 7);
        let instances = txn.open_table(INSTANCES_V1).expect("instances");
        let row = instances.get((1, 1)).expect("get").expect("the row");
        let record = InstanceRecord::decode(row.value()).expect("a row");
        assert_eq!(record.next_seq, 7);
    }

    let pristine = std::fs::read(&path).expect("copy");
    tamper(&path, 6, |bytes| bytes[2] ^= 0x01);
    assert_eq!(corrupt_at(&path), (6, Problem::HeadMismatch), "last event");
    std::fs::write(&path, &pristine).expect("restore");

    let journal = RedbJournal::open(&path).expect("open");
    assert_eq!(journal.prune_ended(u64::MAX).await.expect("prune"), 1);
    assert!(journal.list(true).await.expect("list").is_empty());
    assert_eq!(journal.max_serial(1).await.expect("serial"), 0);
}

/// Rewrites one stored event through redb, as a tamperer would.
fn tamper(path: &std::path::Path, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::create(path).expect("raw open");
    let txn = db.begin_write().expect("txn");
    {
        let mut events = txn.open_table(EVENTS).expect("events");
        let mut bytes = events
            .get((1, 1, seq))
            .expect("get")
            .expect("present")
            .value()
            .to_vec();
        edit(&mut bytes);
        events
            .insert((1, 1, seq), bytes.as_slice())
            .expect("insert");
    }
    txn.commit().expect("commit");
}

fn corrupt_at(path: &std::path::Path) -> (u64, Problem) {
    match RedbJournal::open(path).err().expect("refused") {
        JournalError::Corrupt(error) => {
            assert_eq!(error.id, ID);
            (error.seq, error.problem)
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

// Proves an altered event is named by instance and seq: in the middle, at
// the end (caught by the recorded head), and with an unknown version.
#[tokio::test]
async fn altered_events_are_named_by_instance_and_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    let pristine = std::fs::read(&path).expect("copy");

    tamper(&path, 4, |bytes| {
        *bytes.last_mut().expect("non-empty") ^= 0x01
    });
    assert!(matches!(corrupt_at(&path), (4, _)), "middle event");

    std::fs::write(&path, &pristine).expect("restore");
    tamper(&path, 6, |bytes| bytes[2] ^= 0x01); // a bit of at_ms
    assert_eq!(corrupt_at(&path), (6, Problem::HeadMismatch), "last event");

    std::fs::write(&path, &pristine).expect("restore");
    tamper(&path, 2, |bytes| bytes[0] = 1);
    let (seq, problem) = corrupt_at(&path);
    assert_eq!(seq, 2);
    assert!(
        problem.to_string().contains("newer than this build"),
        "{problem}"
    );
}

// Proves flipping bytes in the file itself (where an event's payload sits)
// is reported as a corrupt event, and a truncated file as an error: never a
// panic, never a silent skip.
#[tokio::test]
async fn flipped_and_truncated_files_give_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    let mut bytes = std::fs::read(&path).expect("read file");
    let mut flipped = 0;
    for start in 0..bytes.len().saturating_sub(MARKER.len()) {
        if &bytes[start..start + MARKER.len()] == MARKER {
            bytes[start + 7] ^= 0x20;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the marker is stored in the file");
    std::fs::write(&path, &bytes).expect("write");
    let (seq, _) = corrupt_at(&path);
    assert!(
        seq <= 1,
        "the Submitted event (or its successor's chain) is named, got {seq}"
    );

    let truncated = dir.path().join("truncated.redb");
    std::fs::create_dir(dir.path().join("t")).expect("mkdir");
    let full = std::fs::read(written_journal(&dir.path().join("t")).await).unwrap_or_default();
    std::fs::write(&truncated, &full[..full.len() / 3]).expect("write");
    assert!(
        RedbJournal::open(&truncated).is_err(),
        "a truncated journal is refused"
    );
}

// Proves prune removes only ended instances older than the cut-off.
#[tokio::test]
async fn prune_removes_only_old_ended_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_journal(dir.path()).await;
    let journal = Arc::new(RedbJournal::open(&path).expect("open"));
    let other = WorkflowId::new(1, 2);
    let open_one = chain(
        0,
        genesis_hash(other),
        vec![start()[0].envelope.body().clone()],
    );
    journal.append(other, 0, open_one).await.expect("append");
    assert_eq!(
        journal.prune_ended(1_000).await.expect("prune"),
        0,
        "too recent"
    );
    assert_eq!(journal.prune_ended(u64::MAX).await.expect("prune"), 1);
    let left = journal.list(true).await.expect("list");
    assert_eq!(left.iter().map(|s| s.id).collect::<Vec<_>>(), vec![other]);
    assert!(matches!(
        journal.read(ID).await,
        Err(JournalError::UnknownInstance(_))
    ));
}
