//! cargo fuzz target `host`: the property lives in
//! `edgeplane_proxy::fuzzing::host`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeplane_proxy::fuzzing::host(data));
