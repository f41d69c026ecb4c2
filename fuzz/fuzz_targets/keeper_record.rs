//! The keeper record (`ringmon::core::monitor::held`): what a worker hands
//! the keeper with a held container and a later worker reads back to resume
//! it.
//!
//! Input: the record's bytes. Checked: nothing panics; a record that
//! decodes encodes to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::core::monitor::held::HeldRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = HeldRecord::decode(data) {
        let again = HeldRecord::decode(&record.encode()).expect("an encoded record decodes");
        assert_eq!(again, record);
    }
});
