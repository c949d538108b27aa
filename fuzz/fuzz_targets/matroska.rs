//! Fuzz target: the incremental Matroska parser and the cluster assembler never panic and stay
//! within their buffer bounds on any input, fed in uneven pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hydrant::media::matroska_parse::fuzz_decode(data);
});
