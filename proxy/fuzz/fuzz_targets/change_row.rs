//! cargo fuzz target `change_row`: the property lives in
//! `edgeplane_proxy::fuzzing::change_row`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeplane_proxy::fuzzing::change_row(data));
