//! Fuzzes frame decoding as a node reads a stream (`node/src/transport`):
//! the input is a stream's bytes — frames of a big-endian `u32` length and
//! a body, refused above the maximum frame size or when cut short, as
//! `frame::read_frame` does — and every body goes through the decoders a
//! frame meets: the request header then the `NodeRequest` payload (what a
//! node serves), the response header then the `NodeResponse` payload (what
//! a caller reads). No input may panic; what decodes must re-encode to
//! bytes that decode again.
//!
//! `cargo +nightly fuzz run frame_decode -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_node::rpc::{NodeRequest, NodeResponse};
use shardflow_node::transport::frame::{DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES};
use shardflow_node::transport::wire::{RequestHeader, ResponseHeader};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((prefix, after)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() {
        let length = u32::from_be_bytes(*prefix);
        if length > DEFAULT_MAX_FRAME_BYTES {
            break; // FrameError::TooLarge: refused before any body is read
        }
        let Some((body, next)) = after.split_at_checked(length as usize) else {
            break; // FrameError::Truncated
        };
        decode_body(body);
        rest = next;
    }
    // The whole input as one body too (the length prefix read elsewhere).
    decode_body(data);
});

fn decode_body(body: &[u8]) {
    if let Ok((header, payload)) = postcard::take_from_bytes::<RequestHeader>(body) {
        round_trip(&header);
        if let Ok(request) = postcard::from_bytes::<NodeRequest>(payload) {
            round_trip(&request);
        }
    }
    if let Ok((header, payload)) = postcard::take_from_bytes::<ResponseHeader>(body) {
        round_trip(&header);
        if let Ok(response) = postcard::from_bytes::<NodeResponse>(payload) {
            round_trip(&response);
        }
    }
}

/// A decoded value re-encodes, and that encoding decodes to the same bytes.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let bytes = postcard::to_allocvec(value).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&bytes).expect("a re-encoded value decodes");
    let again = postcard::to_allocvec(&again).expect("encodes");
    assert_eq!(again, bytes, "decode(encode(x)) re-encodes differently");
}
