//! cargo fuzz target `token`: the property lives in
//! `edgeplane_proxy::fuzzing::token`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeplane_proxy::fuzzing::token(data));
