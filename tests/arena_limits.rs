//! The shared arena against its limits: an arena too fragmented for an
//! array that would fit in its free bytes.

use loky::{Error, ProcessPoolExecutor, SharedVec};

const MIB: usize = 1 << 20;

#[test]
fn a_fragmented_arena_names_its_largest_free_stretch() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .arena_limit(4 * MIB)
        .build()
        .unwrap();
    let mut arrays: Vec<Option<SharedVec<u8>>> = (0..4)
        .map(|_| Some(SharedVec::zeroed(&ex, MIB).unwrap()))
        .collect();
    arrays[0] = None;
    arrays[2] = None;
    match SharedVec::<u8>::zeroed(&ex, 2 * MIB) {
        Err(e @ Error::ArenaFull { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("2097152 of 4194304 in use")
                    && message.contains("fragmented")
                    && message.contains("largest free stretch is 1048576 bytes"),
                "{message}"
            );
        }
        other => panic!("expected ArenaFull, got {:?}", other.map(|v| v.len())),
    }
    // Not fragmented, only full: no word of stretches.
    match SharedVec::<u8>::zeroed(&ex, 3 * MIB) {
        Err(e @ Error::ArenaFull { .. }) => {
            let message = e.to_string();
            assert!(
                !message.contains("fragmented") && message.contains("raise arena_limit"),
                "{message}"
            );
        }
        other => panic!("expected ArenaFull, got {:?}", other.map(|v| v.len())),
    }
}
