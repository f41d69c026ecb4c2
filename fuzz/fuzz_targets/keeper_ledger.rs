//! The output journal's ledger page (`ringmon::engine::journal`): what a
//! worker left in shared memory and a later worker reads back to cut the
//! logs and log the unlogged output again.
//!
//! Input: the page's bytes (any length). Checked: nothing panics; a state
//! that decodes, written to a page of either slot, decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::engine::journal::LedgerState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = LedgerState::decode(data) {
        for seq in [0, 1] {
            let again = LedgerState::decode(&state.encode_page(seq))
                .expect("an encoded ledger page decodes");
            assert_eq!(again, state);
        }
    }
});
