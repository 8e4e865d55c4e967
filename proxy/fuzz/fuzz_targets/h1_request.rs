//! cargo fuzz target `h1_request`: the property lives in
//! `edgeplane_proxy::fuzzing::h1_request`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeplane_proxy::fuzzing::h1_request(data));
