//! cargo fuzz target `snapshot`: the property lives in
//! `edgeplane_proxy::fuzzing::snapshot`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeplane_proxy::fuzzing::snapshot(data));
