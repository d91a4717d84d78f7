//! Fuzzes journal-envelope decoding (`workflow/src/envelope.rs`) and the
//! verification that `shardflow journal verify` and a restarting node run
//! on stored records (`workflow/src/verify.rs`): no input may panic; an
//! envelope that decodes re-encodes to one that decodes equal; a journal
//! made of fuzzed records is refused with a typed error naming a seq.
//!
//! `cargo +nightly fuzz run envelope_decode -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_workflow::envelope::{decode, encode};
use shardflow_workflow::{verify, SealedEvent, WorkflowId};

const ID: WorkflowId = WorkflowId { node: 1, serial: 1 };

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data) {
        let again = decode(&encode(&envelope)).expect("a re-encoded envelope decodes");
        assert_eq!(again, envelope, "decode(encode(x)) != x");
    }
    assert_eq!(
        SealedEvent::open(data.to_vec()).is_ok(),
        decode(data).is_ok()
    );

    // As the records of one instance: each record a length byte and that
    // many bytes, stored under seqs 0, 1, 2, ...
    let mut records = Vec::new();
    let mut rest = data;
    while let Some((&length, after)) = rest.split_first() {
        let (record, next) = after.split_at(usize::from(length).min(after.len()));
        records.push((records.len() as u64, record.to_vec()));
        rest = next;
    }
    let count = records.len() as u64;
    if let Err(error) = verify(ID, records, None) {
        assert_eq!(error.id, ID);
        assert!(error.seq <= count, "{error}");
    }
});
