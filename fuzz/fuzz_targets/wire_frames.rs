//! Every decoder of the agent-server protocol over arbitrary bytes: `cargo fuzz run wire_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hydrant::wire::fuzz_decode(data);
});
