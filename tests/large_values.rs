//! Large values by value: a 256 MiB `Vec<f64>` as a task's argument and as
//! its result, large arguments waiting in the parent's queue, a worker that
//! dies while large messages are in flight, and repeated pools with large
//! values leaving nothing behind.
//!
//! Each test moves several 256 MiB copies around; they run one at a time.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use loky::{Error, ProcessPoolExecutor};

mod support;
use support::fd_count;

/// 256 MiB of `f64`.
const LEN: usize = (256 << 20) / 8;
/// A generous bound that only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(120);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn value(i: usize) -> f64 {
    (i % 1000) as f64 * 0.5
}

fn make(len: u64) -> Vec<f64> {
    (0..len as usize).map(value).collect()
}

/// The exact sum of `make(len)` (every partial sum is a multiple of 0.5
/// well below 2^52, so the sequential sum is exact too).
fn expected_sum(len: usize) -> f64 {
    let full = (len / 1000) as f64 * (0..1000).map(value).sum::<f64>();
    full + (0..len % 1000).map(value).sum::<f64>()
}

/// The sum, the length, and a few samples.
type Summary = (f64, u64, [f64; 4]);

fn summarize(v: Vec<f64>) -> Summary {
    let n = v.len();
    (
        v.iter().sum(),
        n as u64,
        [v[0], v[n / 3], v[n / 2 + 1], v[n - 1]],
    )
}

fn expected_summary(len: usize) -> Summary {
    (
        expected_sum(len),
        len as u64,
        [value(0), value(len / 3), value(len / 2 + 1), value(len - 1)],
    )
}

fn pool() -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .expect("pool")
}

#[test]
fn a_256_mib_argument_arrives_whole() {
    let _serial = serial();
    let ex = pool();
    let data = make(LEN as u64);
    // Twice: the second call goes through the buffers the first one left.
    for _ in 0..2 {
        let got = ex
            .submit(summarize, data.clone())
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        assert_eq!(got, expected_summary(LEN));
    }
    // Sizes on either side of the direct-to-shared-memory threshold and of
    // the ring's inline limit.
    for len in [3, 60_000, 131_000, 140_000, 1 << 20] {
        let got = ex
            .submit(summarize, make(len as u64))
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        assert_eq!(got, expected_summary(len), "{len} values");
    }
}

#[test]
fn a_256_mib_result_arrives_whole() {
    let _serial = serial();
    let ex = pool();
    for _ in 0..2 {
        let v = ex
            .submit(make, LEN as u64)
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        assert_eq!(summarize(v), expected_summary(LEN));
    }
    // Argument and result both large.
    let doubled = ex
        .submit(
            |v: Vec<f64>| v.into_iter().map(|x| 2.0 * x).collect::<Vec<f64>>(),
            make(LEN as u64),
        )
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(doubled.len(), LEN);
    assert_eq!(doubled.iter().sum::<f64>(), 2.0 * expected_sum(LEN));
}

#[test]
fn a_worker_dying_with_large_messages_in_flight_heals() {
    if !support::reruns_supported() {
        return;
    }
    let _serial = serial();
    let ex = pool();
    let data = make(LEN as u64);
    // The worker dies holding its 256 MiB argument, once a second large
    // task waits behind it in its ring (the test says so with a file).
    let go = std::env::temp_dir().join(format!("loky-large-dies-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let dies = ex
        .submit(
            |(v, go): (Vec<f64>, String)| -> f64 {
                let start = std::time::Instant::now();
                while !std::path::Path::new(&go).exists() && start.elapsed() < HANG {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !v.is_empty() {
                    std::process::abort();
                }
                0.0
            },
            (data.clone(), go.to_string_lossy().into_owned()),
        )
        .unwrap();
    let behind = ex.submit(summarize, data.clone()).unwrap();
    let start = std::time::Instant::now();
    while ex.stats().running < 2 {
        assert!(start.elapsed() < HANG, "{:?}", ex.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&go, b"go").unwrap();
    match dies.result_timeout(HANG) {
        Err(Error::TerminatedWorker { .. }) => {}
        other => panic!("expected TerminatedWorker, got {other:?}"),
    }
    let _ = std::fs::remove_file(&go);
    // It waited in the dead worker's ring, in its spill buffer: taken back,
    // it runs on the replacement.
    assert_eq!(behind.result_timeout(HANG).unwrap(), expected_summary(LEN));
    assert_eq!(ex.stats().rerun, 1, "{:?}", ex.stats());
    // The replacement takes large arguments and results again.
    let got = ex
        .submit(summarize, data)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(got, expected_summary(LEN));
    let v = ex
        .submit(make, LEN as u64)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(summarize(v), expected_summary(LEN));
    assert!(ex.stats().crashed >= 1);
    // The buffer the dead worker held was forgotten, not left busy.
    assert_eq!(loky_ipc::spill::pool_stats().busy, 0);
}

#[test]
fn large_arguments_behind_crashes_all_arrive_and_no_spill_buffer_is_left_behind() {
    if !support::reruns_supported() {
        return;
    }
    let _serial = serial();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    // 1 MiB and a little more each: past half the ring, so every argument
    // travels in a spill buffer; lengths differ, so a mixed-up buffer shows.
    let lens: Vec<usize> = (0..40).map(|k| (1 << 20) / 8 + 100 * k).collect();
    // Every fifth task aborts its worker: 8 of the 40.
    fn kills(len: usize) -> bool {
        (len / 100) % 5 == 2
    }
    let crashes = |v: Vec<f64>| -> Summary {
        std::thread::sleep(Duration::from_millis(20));
        if kills(v.len()) {
            std::process::abort();
        }
        summarize(v)
    };
    let futures: Vec<_> = lens
        .iter()
        .map(|&n| ex.submit(crashes, make(n as u64)).unwrap())
        .collect();
    let mut killers = 0;
    for (f, &n) in futures.iter().zip(&lens) {
        match f.result_timeout(HANG) {
            Err(Error::TerminatedWorker { task, .. }) if kills(n) => {
                assert_eq!(task, f.id(), "a crash fails only its own task");
                killers += 1;
            }
            Ok(got) if !kills(n) => assert_eq!(got, expected_summary(n)),
            other => panic!("length {n}: {other:?}"),
        }
    }
    assert_eq!(killers, 8);
    let s = ex.stats();
    assert_eq!(s.crashed as usize, killers, "{s:?}");
    // Taken back from dead workers and sent again, or read: every buffer
    // is free and back in the pool.
    let left = loky_ipc::spill::pool_stats();
    assert_eq!((left.leased, left.busy), (0, 0), "{left:?}, {s:?}");
}

#[test]
fn large_arguments_wait_in_the_queue_without_a_copy_and_arrive_whole() {
    let _serial = serial();
    let ex = pool();
    // 8 MiB each: past the ring, so each travels in a spill buffer of its
    // own. Lengths differ, so a mixed-up buffer shows in the summaries.
    let lens: Vec<usize> = (0..6).map(|k| (8 << 20) / 8 + 1000 * k).collect();
    let slow = |v: Vec<f64>| -> Summary {
        std::thread::sleep(Duration::from_millis(100));
        summarize(v)
    };
    // Keeps the worker busy while the arguments are made and submitted
    // (slow in a debug build on a loaded machine), so that they queue.
    let blocker = ex
        .submit(
            |ms: u64| std::thread::sleep(Duration::from_millis(ms)),
            3000,
        )
        .unwrap();
    let futures: Vec<_> = lens
        .iter()
        .map(|&n| ex.submit(slow, make(n as u64)).unwrap())
        .collect();
    // One worker holds at most two tasks: the rest wait in the parent,
    // each in the spill buffer it was encoded into.
    assert!(ex.stats().queued >= 3, "{:?}", ex.stats());
    assert!(loky_ipc::spill::pool_stats().leased >= 3);
    // A cancelled waiting task gives its buffer back.
    assert!(futures[4].cancel());
    for (k, (f, &n)) in futures.iter().zip(&lens).enumerate() {
        if k == 4 {
            assert!(matches!(f.result_timeout(HANG), Err(Error::Cancelled)));
        } else {
            assert_eq!(f.result_timeout(HANG).unwrap(), expected_summary(n));
        }
    }
    blocker.result_timeout(HANG).unwrap();
    let left = loky_ipc::spill::pool_stats();
    assert_eq!((left.leased, left.busy), (0, 0), "{left:?}");
}

#[test]
fn many_queued_large_arguments_do_not_hold_a_descriptor_each() {
    let _serial = serial();
    let ex = pool();
    const QUEUED: usize = 100;
    // 1 MiB each: past half the ring, so each is encoded in a spill buffer.
    let n = (1 << 20) / 8;
    let gate = ex
        .submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 300)
        .unwrap();
    let fds = fd_count();
    let futures: Vec<_> = (0..QUEUED)
        .map(|k| ex.submit(summarize, make((n + k) as u64)).unwrap())
        .collect();
    // A few wait in their spill buffers, the rest were copied to the heap:
    // a long queue of large arguments must not run the parent out of
    // descriptors (before, each waited in a buffer of its own).
    let held = fd_count().saturating_sub(fds);
    assert!(
        held < QUEUED / 3,
        "{held} descriptors held by {QUEUED} queued tasks"
    );
    gate.result_timeout(HANG).unwrap();
    for (k, f) in futures.iter().enumerate() {
        assert_eq!(f.result_timeout(HANG).unwrap(), expected_summary(n + k));
    }
}

fn spill_mappings() -> usize {
    support::mappings("loky-spill")
}

#[test]
fn pools_with_large_values_leave_nothing_behind() {
    let _serial = serial();
    const N: usize = (64 << 20) / 8;
    let cycle = || {
        let ex = pool();
        let got = ex
            .submit(summarize, make(N as u64))
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        assert_eq!(got, expected_summary(N));
        let v = ex
            .submit(make, N as u64)
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        assert_eq!(v.len(), N);
    };
    // The first cycle fills this process's buffer pool; later ones reuse it.
    cycle();
    let (fds, maps) = (fd_count(), spill_mappings());
    for _ in 0..5 {
        cycle();
    }
    assert_eq!(fd_count(), fds, "descriptors leaked");
    assert_eq!(spill_mappings(), maps, "spill buffers leaked");
    assert!(maps <= loky_ipc::spill::MAX_POOLED);
}

/// A payload of its own: an rkyv archive followed by a trailer. Encoding
/// the inner value must not divert it to shared memory (the trailer would be
/// lost), however large it is.
#[derive(Debug, PartialEq)]
struct WithTrailer(Vec<u8>, u64);

impl loky::Payload for WithTrailer {
    fn encode(&self, out: &mut rkyv::util::AlignedVec) -> Result<(), String> {
        self.0.encode(out)?;
        out.extend_from_slice(&self.1.to_le_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (archive, trailer) = bytes
            .split_at_checked(bytes.len().wrapping_sub(8))
            .ok_or("short")?;
        let t = u64::from_le_bytes(trailer.try_into().map_err(|_| "trailer")?);
        Ok(Self(Vec::<u8>::decode(archive)?, t))
    }
    fn encode_batch(_: &Vec<Self>, _: &mut rkyv::util::AlignedVec) -> Result<(), String> {
        Err("not batched".into())
    }
    fn decode_batch(_: &[u8]) -> Result<Vec<Self>, String> {
        Err("not batched".into())
    }
}

#[test]
fn a_custom_payload_appending_after_a_large_archive_keeps_its_bytes() {
    // Its 3 MiB message travels in a buffer of the process-wide spill pool,
    // which other tests here count.
    let _serial = serial();
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let big = WithTrailer(vec![7u8; 3 << 20], 0xfeed);
    let echoed = ex
        .submit(|w: WithTrailer| WithTrailer(w.0, w.1 + 1), big)
        .unwrap()
        .result_timeout(std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(echoed.1, 0xfeee);
    assert_eq!(echoed.0.len(), 3 << 20);
    assert!(echoed.0.iter().all(|&b| b == 7));
}

/// What a slice task sees: the summary of `data`, checked against `arg`
/// (its expected length), so that the argument's bytes and the slice's
/// are told apart.
fn summarize_slice(data: &[f64], expect_len: u64) -> Summary {
    assert_eq!(data.len() as u64, expect_len, "the argument came through");
    summarize(data.to_vec())
}

#[test]
fn a_256_mib_slice_is_read_in_place_and_arrives_whole() {
    let _serial = serial();
    let ex = pool();
    let mut data = make(LEN as u64);
    // Twice: the second call goes through the buffers the first one left.
    for _ in 0..2 {
        let sum = ex
            .submit_slice(|xs: &[f64], (): ()| xs.iter().sum::<f64>(), &data, ())
            .unwrap();
        // The caller's copy may change at once: the task has its own.
        data[0] += 1.0;
        assert_eq!(sum.result_timeout(HANG).unwrap(), expected_sum(LEN));
        data[0] -= 1.0;
    }
    // Sizes on either side of the direct-to-shared-memory threshold and of
    // the ring's inline limit, and none at all.
    for len in [0, 3, 60_000, 131_000, 140_000, 1 << 20] {
        let data = make(len);
        let got = ex
            .submit_slice(summarize_slice_or_empty, &data, len)
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        let expect = if len == 0 {
            (0.0, 0, [0.0; 4])
        } else {
            expected_summary(len as usize)
        };
        assert_eq!(got, expect, "{len} values");
    }
    // Every spill buffer the large slices went through is back in the
    // pool (none leased, none busy).
    let left = loky_ipc::spill::pool_stats();
    assert_eq!((left.leased, left.busy), (0, 0), "{left:?}");
}

fn summarize_slice_or_empty(data: &[f64], expect_len: u64) -> Summary {
    if data.is_empty() && expect_len == 0 {
        return (0.0, 0, [0.0; 4]);
    }
    summarize_slice(data, expect_len)
}

#[test]
fn slices_of_structs_and_their_arguments_arrive_whole() {
    let _serial = serial();
    let ex = pool();
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C, align(16))]
    struct Particle {
        position: [f32; 3],
        id: u32,
    }
    let particles: Vec<Particle> = (0..200_000u32)
        .map(|id| Particle {
            position: [id as f32, -(id as f32), 0.5],
            id,
        })
        .collect();
    // The ids of the particles past `x`, with a string argument that
    // comes back too.
    fn past(ps: &[Particle], (x, tag): (f32, String)) -> (Vec<u32>, String) {
        let ids = ps
            .iter()
            .filter(|p| p.position[0] > x)
            .map(|p| p.id)
            .collect();
        (ids, tag)
    }
    for n in [1, 5_000, 200_000] {
        let (ids, tag) = ex
            .submit_slice(past, &particles[..n], (n as f32 - 4.0, format!("n={n}")))
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        let expect: Vec<u32> = (0..n as u32)
            .filter(|&i| i as f32 > n as f32 - 4.0)
            .collect();
        assert_eq!((ids, tag), (expect, format!("n={n}")));
    }
}

#[test]
fn a_slice_task_that_panics_or_kills_its_worker_fails_alone() {
    let _serial = serial();
    let ex = pool();
    let data = make(1 << 20);
    let panics = |xs: &[f64], (): ()| -> f64 { panic!("bad slice of {}", xs.len()) };
    match ex
        .submit_slice(panics, &data, ())
        .unwrap()
        .result_timeout(HANG)
    {
        Err(Error::TaskPanicked { message, .. }) => {
            assert!(message.contains("bad slice of 1048576"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let aborts = |_: &[f64], (): ()| -> f64 { std::process::abort() };
    let killed = ex.submit_slice(aborts, &data, ()).unwrap();
    assert!(
        matches!(
            killed.result_timeout(HANG),
            Err(Error::TerminatedWorker { .. })
        ),
        "an abort fails its task"
    );
    // The pool healed, and the next large slice goes through whole.
    let sum = ex.submit_slice(|xs: &[f64], (): ()| xs.iter().sum::<f64>(), &data, ());
    assert_eq!(
        sum.unwrap().result_timeout(HANG).unwrap(),
        expected_sum(1 << 20)
    );
    assert_eq!(ex.stats().crashed, 1);
}
