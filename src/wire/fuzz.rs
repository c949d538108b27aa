//! One entry point that runs every decoder of outside input over arbitrary bytes, for fuzzers
//! (`fuzz/fuzz_targets/wire_frames.rs`) and for the random-input unit test.

use super::codec::{self, FrameDecoder};

/// Runs every decoder over `bytes`. It must return (never panic, never allocate beyond the
/// limits) whatever the input; it also checks that a decoded fragment header re-encodes to
/// the same bytes.
pub fn fuzz_decode(bytes: &[u8]) {
    let _ = codec::decode_client_body(bytes);
    let _ = codec::decode_server_body(bytes);
    let _ = codec::decode_fragment_header_body(bytes);
    if let Ok((header, used)) = codec::decode_fragment_header(bytes) {
        assert_eq!(codec::encode_fragment_header(&header), bytes[..used]);
    }
    drain(bytes, |d| {
        d.next_client().map(|m| m.map(|m| codec::encode_client(&m)))
    });
    drain(bytes, |d| {
        d.next_server().map(|m| m.map(|m| codec::encode_server(&m)))
    });
}

/// Feeds `bytes` through a [`FrameDecoder`] in chunks it accepts, until it errors or ends.
fn drain(
    bytes: &[u8],
    mut next: impl FnMut(&mut FrameDecoder) -> Result<Option<Vec<u8>>, super::WireError>,
) {
    let mut decoder = FrameDecoder::new();
    let mut rest = bytes;
    // Each turn either consumes input or yields a frame, so this ends; the cap is a backstop.
    for _ in 0..=bytes.len().saturating_mul(2).saturating_add(2) {
        match next(&mut decoder) {
            Ok(Some(_)) => continue,
            Err(_) => return,
            Ok(None) => {}
        }
        if rest.is_empty() {
            let _ = decoder.finish();
            return;
        }
        let n = decoder.space().min(rest.len()).min(97);
        if n == 0 {
            return;
        }
        let (chunk, tail) = rest.split_at(n);
        if decoder.push(chunk).is_err() {
            return;
        }
        rest = tail;
    }
}
