//! The shared-memory global allocator, installed in this test binary.

use std::os::fd::AsFd;

use loky_ipc::shm_alloc::{self, SharedMemoryAllocator, HEAD_ROOM};
use proptest::prelude::*;

const THRESHOLD: usize = 1 << 20;

#[global_allocator]
static ALLOC: SharedMemoryAllocator = SharedMemoryAllocator::with_threshold(THRESHOLD);

/// Tests count segments, which other tests' threads change: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn the_allocator_knows_it_is_installed() {
    assert_eq!(shm_alloc::installed(), Some(THRESHOLD));
}

#[test]
fn large_blocks_are_segments_and_small_ones_are_not() {
    let _s = serial();
    let before = shm_alloc::live_segments();
    let small = vec![1u8; THRESHOLD - 1];
    assert_eq!(shm_alloc::live_segments(), before);
    let large = vec![2u8; THRESHOLD];
    assert_eq!(shm_alloc::live_segments(), before + 1);
    let zeroed = vec![0u64; THRESHOLD];
    assert!(zeroed.iter().all(|&x| x == 0));
    assert_eq!(shm_alloc::live_segments(), before + 2);
    assert!(large.iter().all(|&x| x == 2) && small.iter().all(|&x| x == 1));
    drop((large, zeroed));
    assert_eq!(shm_alloc::live_segments(), before);
}

#[test]
fn a_vec_that_grows_through_the_threshold_keeps_its_contents() {
    let _s = serial();
    let before = shm_alloc::live_segments();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(4 * THRESHOLD as u64 / 8) {
        v.push(i);
    }
    assert_eq!(shm_alloc::live_segments(), before + 1);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(
        shm_alloc::live_segments(),
        before,
        "shrunk below the threshold"
    );
    assert_eq!(v, (0..10).collect::<Vec<u64>>());
}

#[test]
fn a_donated_block_is_the_same_memory_where_it_is_adopted() {
    let _s = serial();
    let before = shm_alloc::live_segments();
    let mut v = vec![7.5f64; THRESHOLD / 8 * 3];
    v[3] = 1.25;
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `v` owns the block and is forgotten next.
    let segment = unsafe { shm_alloc::donate(ptr.cast()) }.expect("a segment");
    std::mem::forget(v);
    assert_eq!(shm_alloc::live_segments(), before);
    // As a receiver would: map the descriptor, own the block.
    let data = shm_alloc::adopt(segment.fd(), segment.len()).expect("adopted");
    assert!(cap * 8 <= segment.len() - HEAD_ROOM);
    drop(segment); // the sender lets go; the pages stay with the receiver
                   // SAFETY: the adopted block holds `len` initialised f64 of the donated
                   // Vec, at least `cap` of room, and is this process's allocation now.
    let mut back = unsafe { Vec::from_raw_parts(data.cast::<f64>(), len, cap) };
    assert_eq!(back[3], 1.25);
    assert_eq!(back[4], 7.5);
    back.push(2.0); // grows past its capacity
    assert_eq!(back[len], 2.0);
    drop(back);
    assert_eq!(shm_alloc::live_segments(), before);
}

#[test]
fn only_the_start_of_a_segment_can_be_donated() {
    let _s = serial();
    let v = vec![1u32; THRESHOLD];
    // SAFETY: neither is the start of a segment, so nothing is taken.
    assert!(unsafe { shm_alloc::donate(v[1..].as_ptr().cast()) }.is_none());
    let small = Box::new([1u32; 4]);
    // SAFETY: as above.
    assert!(unsafe { shm_alloc::donate(small.as_ptr().cast()) }.is_none());
    assert!(v.iter().all(|&x| x == 1));
}

#[test]
fn a_forked_child_gets_a_copy_not_the_parents_pages() {
    let _s = serial();
    let mut v = vec![1u8; 2 * THRESHOLD];
    // SAFETY: the child only touches `v` (already allocated), and exits
    // with `_exit`; no lock is held by another thread of this test binary
    // that the child needs (it allocates nothing large).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        v[0] = 9;
        let ok = v[1] == 1 && v[0] == 9;
        // SAFETY: leave the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
    assert_eq!(v[0], 1, "the child's write reached the parent");
    v[1] = 3;
    assert_eq!(v[1], 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_sequence_of_sizes_keeps_every_byte(sizes in proptest::collection::vec(0usize..3 * THRESHOLD, 1..8)) {
        let _s = serial();
        let before = shm_alloc::live_segments();
        let mut v: Vec<u8> = Vec::new();
        // Which step wrote each range of bytes: (end, tag), ascending.
        let mut written: Vec<(usize, u8)> = Vec::new();
        for (step, &size) in sizes.iter().enumerate() {
            let tag = step as u8 + 1;
            if size > v.len() {
                v.resize(size, tag);
                written.push((size, tag));
            } else {
                v.truncate(size);
                v.shrink_to_fit();
                let cut = written.iter().find(|w| w.0 >= size).map(|w| w.1);
                written.retain(|&(end, _)| end < size);
                if let Some(t) = cut.filter(|_| size > written.last().map_or(0, |w| w.0)) {
                    written.push((size, t));
                }
            }
            let mut start = 0;
            for &(end, t) in &written {
                for i in (start..end).step_by(4093).chain(end.checked_sub(1)) {
                    prop_assert_eq!(v[i], t, "byte {} after step {}", i, step);
                }
                start = end;
            }
        }
        drop(v);
        prop_assert_eq!(shm_alloc::live_segments(), before);
    }
}

#[test]
fn adopting_needs_a_block_at_least_the_threshold() {
    let _s = serial();
    let v = vec![1u8; THRESHOLD];
    // SAFETY: `v` owns the block and is forgotten next.
    let seg = unsafe { shm_alloc::donate(v.as_ptr()) }.unwrap();
    std::mem::forget(v);
    // A length that leaves less than the threshold after the head room.
    assert!(shm_alloc::adopt(seg.fd().as_fd(), HEAD_ROOM + THRESHOLD - 1).is_none());
    drop(seg);
}

/// Run by `a_low_open_file_limit_caps_the_segments` in a child whose soft
/// open-file limit is 64: a quarter of it, 16, are segments; the rest of
/// the large blocks come from the system allocator, and all work.
#[test]
#[ignore = "run in a child by a_low_open_file_limit_caps_the_segments"]
fn child_with_64_descriptors() {
    if std::env::var_os("LOKY_TEST_NOFILE_CHILD").is_none() {
        return;
    }
    let blocks: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; THRESHOLD]).collect();
    assert_eq!(shm_alloc::live_segments(), 16);
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8));
    }
    // Descriptors are left for the program.
    let file = std::fs::File::open("/proc/self/status");
    assert!(file.is_ok());
}

#[test]
fn a_low_open_file_limit_caps_the_segments() {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        "child_with_64_descriptors",
        "--test-threads=1",
    ])
    .env("LOKY_TEST_NOFILE_CHILD", "1");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_forked_child_copies_the_blocks_as_they_were_at_the_fork() {
    let _s = serial();
    // Large enough that copying it takes a while: a parent that went on
    // at once would change its end before the child's copy got there.
    let mut v = vec![1u8; 256 << 20];
    let last = v.len() - 1;
    // SAFETY: the child only reads `v` and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = v[last] == 1 && v[0] == 1;
        // SAFETY: leave the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    v[last] = 2;
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child saw a write the parent made after the fork"
    );
}

#[test]
fn a_restored_segment_is_the_allocators_again() {
    let _s = serial();
    let before = shm_alloc::live_segments();
    let v = vec![3u16; THRESHOLD];
    // SAFETY: `v` stays alive and is not used until the segment is back.
    let seg = unsafe { shm_alloc::donate(v.as_ptr().cast()) }.unwrap();
    assert_eq!(shm_alloc::live_segments(), before);
    shm_alloc::restore(seg).unwrap();
    assert_eq!(shm_alloc::live_segments(), before + 1);
    assert!(v.iter().all(|&x| x == 3));
    drop(v);
    assert_eq!(shm_alloc::live_segments(), before);
}
