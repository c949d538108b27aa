//! Fuzz target: the media payload decoder never panics, and whatever it accepts encodes back to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hydrant::media::fuzz_decode(data);
});
