//! Shared arrays: zero-copy arguments, in-place outputs, the lease rules,
//! memory returning to the arena, and every bad input as a typed error.

use std::time::Duration;

use loky::{Error, ProcessPoolExecutor, SharedSlice, SharedSliceMut, SharedVec};

mod support;
use support::{wait_for_gate, Gate};

/// Fails the test (instead of hanging it) if `body` takes longer than
/// `secs`.
fn bounded<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    support::bounded(Duration::from_secs(secs), body)
}

fn pool(n: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::new(n).unwrap()
}

/// The pid of the worker that runs the next task (the only one in a pool
/// of one); once it returns, that worker is up.
fn worker_pid(ex: &ProcessPoolExecutor) -> u32 {
    ex.submit(|_: ()| std::process::id(), ())
        .unwrap()
        .result()
        .unwrap()
}

#[test]
fn a_worker_reads_the_parents_array_in_place() {
    bounded(60, || {
        let ex = pool(2);
        let data: Vec<f64> = (0..1_000_000).map(|i| (i % 1000) as f64 * 0.5).collect();
        let v = SharedVec::from_slice(&ex, &data).unwrap();
        let expected: f64 = data.iter().sum();
        let sum = ex
            .submit(
                |s: SharedSlice<f64>| s.iter().sum::<f64>(),
                v.slice(..).unwrap(),
            )
            .unwrap();
        assert_eq!(sum.result().unwrap(), expected);
        // The worker saw the very pages: its address of element 0 differs,
        // but a write by the parent after sending is visible to a later task.
        let mut v = v;
        v.as_mut_slice()[123] = 1e9;
        let x = ex
            .submit(|s: SharedSlice<f64>| s[123], v.slice(..).unwrap())
            .unwrap();
        assert_eq!(x.result().unwrap(), 1e9);
    });
}

#[test]
fn tasks_fill_disjoint_chunks_in_place() {
    bounded(60, || {
        let ex = pool(2);
        let mut out = SharedVec::<u64>::zeroed(&ex, 100_003).unwrap();
        let futures: Vec<_> = out
            .chunks_mut(10_000)
            .unwrap()
            .enumerate()
            .map(|(i, chunk)| {
                ex.submit(
                    |(i, mut c): (u64, SharedSliceMut<u64>)| {
                        for (j, x) in c.iter_mut().enumerate() {
                            *x = i * 10_000 + j as u64;
                        }
                        c.len()
                    },
                    (i as u64, chunk),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(futures.len(), 11);
        let total: usize = futures.into_iter().map(|f| f.result().unwrap()).sum();
        assert_eq!(total, 100_003);
        let got = out.as_slice();
        assert!(got.iter().enumerate().all(|(i, &x)| x == i as u64));
    });
}

#[test]
fn map_shared_doubles_every_element_and_reports_panics() {
    bounded(60, || {
        let ex = pool(2);
        let input = SharedVec::from_iter_in(&ex, 0..1_000_000u64).unwrap();
        let out = ex.map_shared(|x: u64| x * 2, &input).unwrap();
        assert_eq!(out.len(), input.len());
        assert!(out
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &x)| x == 2 * i as u64));

        let err = ex
            .map_shared(
                |x: u64| {
                    assert!(x != 777_777, "bad element");
                    x
                },
                &input,
            )
            .unwrap_err();
        assert!(matches!(err, Error::TaskPanicked { .. }), "{err}");
        // Every task finished: the input is free for writing again.
        let mut input = input;
        input.as_mut_slice()[0] = 5;

        let mut wrong = SharedVec::<u64>::zeroed(&ex, 3).unwrap();
        assert!(matches!(
            ex.map_shared_into(|x: u64| x, &input, &mut wrong),
            Err(Error::InvalidArgument(_))
        ));
    });
}

/// An argument whose encoding cannot be read back (its decoding fails).
#[derive(Clone, Debug)]
struct Unreadable;

impl loky::Payload for Unreadable {
    fn encode(&self, out: &mut loky::AlignedVec) -> Result<(), String> {
        out.extend_from_slice(&[1; 16]);
        Ok(())
    }
    fn decode(_: &[u8]) -> Result<Self, String> {
        Err("this argument cannot be read".into())
    }
    fn encode_batch(_: &Vec<Self>, _: &mut loky::AlignedVec) -> Result<(), String> {
        Err("unused".into())
    }
    fn decode_batch(_: &[u8]) -> Result<Vec<Self>, String> {
        Err("unused".into())
    }
}

/// A small array of costly elements (a parameter sweep) is shared out to
/// every worker: it was one chunk, on one worker, below 257 elements.
#[test]
fn map_shared_spreads_a_small_array_over_every_worker() {
    bounded(60, || {
        let ex = pool(2);
        // Both workers up and ready (two tasks at once ran on two of
        // them): the two chunks then go to the two idle workers.
        let pid_after = |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::id()
        };
        loop {
            let pair: Vec<_> = (0..2).map(|_| ex.submit(pid_after, 30).unwrap()).collect();
            let pids: Vec<u32> = pair.into_iter().map(|f| f.result().unwrap()).collect();
            if pids[0] != pids[1] {
                break;
            }
        }
        let params = SharedVec::from_iter_in(&ex, 0..10u32).unwrap();
        let simulate = |_: u32| -> u32 {
            std::thread::sleep(Duration::from_millis(30));
            std::process::id()
        };
        let pids = ex.map_shared(simulate, &params).unwrap().to_vec();
        let mut distinct = pids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "ran on {distinct:?}");
    });
}

#[test]
fn map_shared_with_gives_every_element_the_argument() {
    bounded(60, || {
        let ex = pool(2);
        let input = SharedVec::from_iter_in(&ex, 0..100_000u32).unwrap();
        // Parameters known at run time, and a lookup table.
        let (k, table): (u64, Vec<u64>) = (3, (0..16).map(|i| i * i).collect());
        let f = |x: u32, (k, table): &(u64, Vec<u64>)| u64::from(x) * k + table[x as usize % 16];
        let out = ex.map_shared_with(f, &input, (k, table.clone())).unwrap();
        assert!(out
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &y)| y == i as u64 * k + table[i % 16]));
        // Into an existing array, whose length must match.
        let mut into = SharedVec::<u64>::zeroed(&ex, input.len()).unwrap();
        ex.map_shared_into_with(|x: u32, k: &u64| u64::from(x) + k, &input, &mut into, 7)
            .unwrap();
        assert_eq!(into.as_slice()[99_999], 100_006);
        let mut wrong = SharedVec::<u64>::zeroed(&ex, 3).unwrap();
        assert!(matches!(
            ex.map_shared_into_with(|x: u32, k: &u64| u64::from(x) + k, &input, &mut wrong, 7),
            Err(Error::InvalidArgument(_))
        ));
        // An argument the workers cannot read fails the map with a codec
        // error, after every task ended (the output is free again).
        let bad = ex.map_shared_with(|x: u32, _: &Unreadable| x, &input, Unreadable);
        match bad {
            Err(Error::Codec { stage, message }) => {
                assert_eq!(stage, loky::CodecStage::DecodeArgument);
                assert!(message.contains("cannot be read"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A shared array as the argument is refused, not sent.
        let other = SharedVec::from_iter_in(&ex, 0..4u32).unwrap();
        let handle = other.slice(..).unwrap();
        let refused = ex.map_shared_with(|x: u32, _: &SharedSlice<u32>| x, &input, handle);
        match refused {
            Err(Error::Codec { message, .. }) => {
                assert!(message.contains("map_shared_with"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn map_over_chunks_of_a_shared_vec() {
    bounded(60, || {
        let ex = pool(2);
        let v = SharedVec::from_iter_in(&ex, (0..50_000u32).map(|i| i as f32)).unwrap();
        let sums: Vec<f64> = ex
            .map(
                |c: SharedSlice<f32>| c.iter().map(|&x| f64::from(x)).sum::<f64>(),
                v.chunks(4096).unwrap(),
            )
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(sums.len(), 50_000usize.div_ceil(4096));
        let expected: f64 = (0..50_000u32).map(f64::from).sum();
        assert_eq!(sums.iter().sum::<f64>(), expected);
    });
}

#[test]
fn leases_follow_the_borrow_rules() {
    let ex = pool(1);
    let mut v = SharedVec::<u32>::zeroed(&ex, 100).unwrap();
    let r = v.slice(10..20).unwrap();
    assert!(matches!(
        v.slice_mut(15..30),
        Err(Error::RangeBusy { start: 10, end: 20 })
    ));
    assert!(v.try_as_mut_slice().is_err());
    let w = v.slice_mut(20..30).unwrap();
    assert!(matches!(v.slice(25..26), Err(Error::RangeBusy { .. })));
    assert!(
        v.try_as_slice().is_err(),
        "a writer excludes reading the whole"
    );
    assert!(v.chunks(10).is_err());
    drop(w);
    assert_eq!(v.try_as_slice().unwrap().len(), 100);
    let sub = r.slice(2..5).unwrap();
    drop(r);
    assert!(
        v.slice_mut(12..13).is_err(),
        "the sub-slice still holds 12..15"
    );
    drop(sub);
    v.as_mut_slice()[0] = 1;
}

#[test]
fn out_of_bounds_and_zero_chunks_are_errors() {
    let ex = pool(1);
    let mut v = SharedVec::<u8>::zeroed(&ex, 10).unwrap();
    assert!(matches!(
        v.slice(5..100),
        Err(Error::OutOfBounds {
            start: 5,
            end: 100,
            len: 10
        })
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = v.slice(7..3).unwrap_err();
    assert!(matches!(backwards, Error::OutOfBounds { .. }));
    assert!(
        backwards.to_string().contains("starts after its end"),
        "{backwards}"
    );
    let past = v.slice(5..100).unwrap_err().to_string();
    assert!(
        past.contains("out of bounds") && past.contains("length 10"),
        "{past}"
    );
    assert!(matches!(v.slice_mut(..=10), Err(Error::OutOfBounds { .. })));
    assert!(matches!(v.chunks(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(v.chunks_mut(0), Err(Error::InvalidArgument(_))));
    let s = v.slice(2..8).unwrap();
    assert!(matches!(s.slice(0..7), Err(Error::OutOfBounds { .. })));
}

#[test]
fn a_handle_sent_to_another_pool_is_refused() {
    bounded(60, || {
        let a = pool(1);
        let b = pool(1);
        let v = SharedVec::from_slice(&a, &[1u64, 2, 3]).unwrap();
        assert!(v.belongs_to(&a) && !v.belongs_to(&b));
        let err = b
            .submit(|s: SharedSlice<u64>| s.len(), v.slice(..).unwrap())
            .unwrap_err();
        assert!(matches!(err, Error::ForeignArena), "{err}");
        // The failed submission released its pin.
        drop(v);
        assert_eq!(a.shared_memory().in_use, 0);
        assert_eq!(b.submit(|x: u8| x, 1).unwrap().result().unwrap(), 1);
    });
}

#[test]
fn a_full_arena_is_an_error_and_frees_make_room() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .arena_limit(1 << 20)
        .build()
        .unwrap();
    assert_eq!(ex.shared_memory().limit, 1 << 20);
    let a = SharedVec::<u8>::zeroed(&ex, 600 << 10).unwrap();
    let err = SharedVec::<u8>::zeroed(&ex, 600 << 10).unwrap_err();
    match err {
        Error::ArenaFull {
            requested, limit, ..
        } => {
            assert_eq!(requested, 600 << 10);
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("expected ArenaFull, got {other}"),
    }
    drop(a);
    SharedVec::<u8>::zeroed(&ex, 1 << 20).unwrap();
    assert!(matches!(
        SharedVec::<u64>::zeroed(&ex, usize::MAX / 4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ProcessPoolExecutor::builder().arena_limit(0).build(),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn memory_returns_when_the_last_handle_including_a_tasks_goes() {
    bounded(60, || {
        let ex = pool(1);
        let v = SharedVec::<u8>::zeroed(&ex, 8 << 20).unwrap();
        let slow = ex
            .submit(
                |s: SharedSlice<u8>| {
                    std::thread::sleep(Duration::from_millis(300));
                    s.iter().map(|&b| u64::from(b)).sum::<u64>()
                },
                v.slice(..).unwrap(),
            )
            .unwrap();
        drop(v);
        assert!(
            ex.shared_memory().in_use >= 8 << 20,
            "the running task still holds the array"
        );
        assert_eq!(slow.result().unwrap(), 0);
        assert_eq!(
            ex.shared_memory().in_use,
            0,
            "the task's pin went with its result"
        );
    });
}

#[test]
fn a_task_stopped_while_waiting_in_a_ring_releases_its_range_at_once() {
    bounded(60, || {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let mut v = SharedVec::<u32>::zeroed(&ex, 1000).unwrap();
        // The worker runs `first` until the gate opens, so `behind` waits
        // in its ring, not started, while it is killed.
        let gate = Gate::closed("behind-kill");
        let first = ex.submit(wait_for_gate, gate.path()).unwrap();
        let behind = ex
            .submit(
                |mut c: SharedSliceMut<u32>| c.fill(9),
                v.slice_mut(..).unwrap(),
            )
            .unwrap();
        assert!(behind.running(), "handed to the worker");
        // Withdrawn: it never runs, and no worker is killed for it. Its
        // range is free at once, while the task in front still runs.
        assert!(behind.kill());
        assert!(matches!(behind.result(), Err(Error::Cancelled)));
        assert!(
            v.try_as_mut_slice().is_ok(),
            "free before the worker skips it"
        );
        // The same with a time limit that expires while it waits.
        let timed = ex
            .submit_with_timeout(
                |mut c: SharedSliceMut<u32>| c.fill(7),
                v.slice_mut(..).unwrap(),
                Duration::from_millis(50),
            )
            .unwrap();
        assert!(matches!(timed.result(), Err(Error::TimeLimit)));
        assert!(v.try_as_mut_slice().is_ok(), "free when its time is up");
        assert!(!first.done(), "the task in front still runs");
        gate.open();
        assert_eq!(first.result().unwrap(), 1);
        assert_eq!(worker_pid(&ex), pid, "the worker was not killed");
        assert!(v.try_as_mut_slice().is_ok());
        assert!(v.as_slice().iter().all(|&x| x == 0), "the killed task ran");
        assert_eq!(ex.stats().respawned, 0);
    });
}

/// `kill` returns with the future ended and its range free: a scheduler
/// may reuse the array at once. (It returned as the kill was sent, about a
/// millisecond before the pool saw the worker die and freed the range.)
#[test]
fn a_killed_running_task_has_ended_and_freed_its_range_when_kill_returns() {
    bounded(60, || {
        let ex = pool(1);
        let marker = std::env::temp_dir().join(format!("loky-kill-range-{}", std::process::id()));
        for _ in 0..3 {
            let _ = std::fs::remove_file(&marker);
            let mut v = SharedVec::<u32>::zeroed(&ex, 1000).unwrap();
            let f = ex
                .submit(
                    |(marker, mut c): (String, SharedSliceMut<u32>)| -> () {
                        c[1] = 1;
                        let _ = std::fs::write(marker, b"started");
                        loop {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    },
                    (
                        marker.to_string_lossy().into_owned(),
                        v.slice_mut(..).unwrap(),
                    ),
                )
                .unwrap();
            // Running, not only handed to the worker: the kill kills it.
            while !marker.exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(f.kill());
            assert!(f.done(), "kill returned before the future ended");
            assert!(matches!(
                f.exception_timeout(Duration::ZERO),
                Ok(Some(Error::Cancelled))
            ));
            assert!(
                v.try_as_mut_slice().is_ok(),
                "the killed task's range is still busy"
            );
            assert_eq!(v.as_slice()[1], 1, "its writes are kept");
        }
        let _ = std::fs::remove_file(&marker);
    });
}

#[test]
fn a_crash_while_writing_releases_the_range() {
    bounded(60, || {
        let ex = pool(1);
        let mut v = SharedVec::<u8>::zeroed(&ex, 4096).unwrap();
        let f = ex
            .submit(
                |mut c: SharedSliceMut<u8>| -> () {
                    c[0] = 1;
                    std::process::abort()
                },
                v.slice_mut(..).unwrap(),
            )
            .unwrap();
        assert!(matches!(f.result(), Err(Error::TerminatedWorker { .. })));
        assert_eq!(v.as_mut_slice()[0], 1, "writes before the crash are kept");
        let ok = ex
            .submit(
                |mut c: SharedSliceMut<u8>| c[1] = 2,
                v.slice_mut(..).unwrap(),
            )
            .unwrap();
        ok.result().unwrap();
        assert_eq!(v.as_slice()[1], 2);
    });
}

thread_local! {
    static KEPT: std::cell::RefCell<Option<SharedSlice<u8>>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn a_handle_kept_past_its_task_or_sent_back_is_refused() {
    bounded(60, || {
        let ex = pool(1);
        let v = SharedVec::from_slice(&ex, &[7u8; 64]).unwrap();
        // Keeping a handle would let the worker touch memory the parent
        // reuses: the worker exits instead of reporting the task done.
        let kept = ex
            .submit(
                |s: SharedSlice<u8>| KEPT.with(|k| *k.borrow_mut() = Some(s)),
                v.slice(..).unwrap(),
            )
            .unwrap();
        match kept.result() {
            Err(Error::TerminatedWorker { status, .. }) => {
                assert_eq!(status, loky::ExitStatus::Exited(80))
            }
            other => panic!("expected the worker to exit, got {other:?}"),
        }
        let leaked = ex
            .submit(
                |s: SharedSliceMut<u8>| {
                    Box::leak(Box::new(s));
                },
                SharedVec::<u8>::zeroed(&ex, 8)
                    .unwrap()
                    .slice_mut(..)
                    .unwrap(),
            )
            .unwrap();
        assert!(matches!(
            leaked.result(),
            Err(Error::TerminatedWorker { .. })
        ));
        let back = ex
            .submit(|s: SharedSlice<u8>| s, v.slice(..).unwrap())
            .unwrap();
        assert!(
            matches!(back.result(), Err(Error::Codec { .. })),
            "a handle cannot come back as a result"
        );
        // Decoding a handle by hand inside a task is refused too.
        let forged = ex
            .submit(
                |bytes: Vec<u8>| {
                    let mut aligned = rkyv::util::AlignedVec::<16>::new();
                    aligned.extend_from_slice(&bytes);
                    rkyv::from_bytes::<SharedSlice<u8>, rkyv::rancor::Error>(&aligned).is_err()
                },
                vec![0u8; 32],
            )
            .unwrap();
        assert!(forged.result().unwrap());
        // Still usable afterwards, and nothing is left pinned.
        assert_eq!(
            ex.submit(|s: SharedSlice<u8>| s[63], v.slice(..).unwrap())
                .unwrap()
                .result()
                .unwrap(),
            7
        );
        drop(v);
        assert_eq!(ex.shared_memory().in_use, 0);
    });
}

#[test]
fn empty_arrays_and_outside_a_pool() {
    let ex = pool(1);
    let v = SharedVec::<f64>::zeroed(&ex, 0).unwrap();
    assert!(v.is_empty() && v.as_slice().is_empty());
    assert_eq!(v.chunks(5).unwrap().count(), 0);
    let s = v.slice(..).unwrap();
    assert_eq!(
        ex.submit(|s: SharedSlice<f64>| s.len(), s)
            .unwrap()
            .result()
            .unwrap(),
        0
    );
    // Encoding a handle outside `submit` is an error, not a leak of the
    // lease into nowhere.
    let h = v.slice(..).unwrap();
    assert!(rkyv::to_bytes::<rkyv::rancor::Error>(&h).is_err());
}

#[test]
fn reading_shared_arrays_does_not_count_as_worker_memory_growth() {
    bounded(120, || {
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .memory_limit(32 << 20)
            .build()
            .unwrap();
        let v = SharedVec::<u64>::from_iter_in(&ex, 0..(16u64 << 20)).unwrap(); // 128 MiB
                                                                                // (Taken from a task: right after `build` the worker may still be
                                                                                // starting, and not listed yet.)
        let pid = vec![worker_pid(&ex)];
        for _ in 0..3 {
            let s = ex
                .submit(
                    |s: SharedSlice<u64>| s.iter().sum::<u64>(),
                    v.slice(..).unwrap(),
                )
                .unwrap();
            assert_eq!(s.result().unwrap(), (16u64 << 20) * ((16u64 << 20) - 1) / 2);
        }
        assert_eq!(ex.worker_pids(), pid, "the worker was not recycled");
        assert_eq!(ex.stats().respawned, 0);
    });
}

#[test]
fn concurrent_allocations_never_overlap() {
    bounded(120, || {
        let ex = std::sync::Arc::new(pool(2));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let ex = ex.clone();
                std::thread::spawn(move || {
                    for round in 0..40u32 {
                        let tag = t * 1000 + round;
                        let len = 1 + ((tag as usize * 7919) % 300_000);
                        let input = SharedVec::from_slice(&ex, &vec![tag; len]).unwrap();
                        let mut out = SharedVec::<u32>::zeroed(&ex, len).unwrap();
                        let f = ex
                            .submit(
                                |(i, mut o): (SharedSlice<u32>, SharedSliceMut<u32>)| {
                                    let first = i[0];
                                    let uniform = i.iter().all(|&x| x == first);
                                    o.iter_mut().for_each(|x| *x = first + 1);
                                    uniform
                                },
                                (input.slice(..).unwrap(), out.slice_mut(..).unwrap()),
                            )
                            .unwrap();
                        assert!(f.result().unwrap(), "input {tag} was overwritten");
                        assert!(out.as_slice().iter().all(|&x| x == tag + 1));
                        assert!(input.as_slice().iter().all(|&x| x == tag));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ex.shared_memory().in_use, 0);
    });
}

#[test]
fn a_task_stopped_while_waiting_in_the_parent_releases_its_range() {
    bounded(60, || {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let mut v = SharedVec::<u32>::zeroed(&ex, 16).unwrap();
        let gate = Gate::closed("parent-kill");
        let busy = ex.submit(wait_for_gate, gate.path()).unwrap();
        // The worker's ring takes one more task; the next ones wait in the
        // parent.
        let filler = ex.submit(|x: u8| x, 1).unwrap();
        let waiting = ex
            .submit(
                |mut c: SharedSliceMut<u32>| c.fill(1),
                v.slice_mut(..).unwrap(),
            )
            .unwrap();
        assert!(!waiting.running());
        assert!(waiting.kill());
        assert!(matches!(waiting.result(), Err(Error::Cancelled)));
        assert!(
            v.try_as_mut_slice().is_ok(),
            "a task that never reached a worker holds nothing"
        );
        // The same with cancel.
        let again = ex
            .submit(
                |mut c: SharedSliceMut<u32>| c.fill(2),
                v.slice_mut(..).unwrap(),
            )
            .unwrap();
        assert!(
            again.cancel(),
            "a task waiting in the parent can be cancelled"
        );
        assert!(v.try_as_mut_slice().is_ok());
        gate.open();
        assert_eq!(busy.result().unwrap(), 1);
        assert_eq!(filler.result().unwrap(), 1);
        assert_eq!(worker_pid(&ex), pid, "no worker was killed");
        assert!(v.as_slice().iter().all(|&x| x == 0), "neither task ran");
    });
}

#[test]
fn iterators_must_keep_their_size_hint_and_limits_must_fit_the_machine() {
    struct Liar(u32);
    impl Iterator for Liar {
        type Item = u32;
        fn next(&mut self) -> Option<u32> {
            self.0 += 1;
            (self.0 < 10).then_some(self.0)
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (3, Some(3))
        }
    }
    let ex = pool(1);
    assert!(matches!(
        SharedVec::from_iter_in(&ex, Liar(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ProcessPoolExecutor::builder()
            .arena_limit(usize::MAX)
            .build(),
        Err(Error::InvalidConfig(_))
    ));
}

/// A codec with a bug: it caches the first encoding of a handle and sends
/// those bytes for every later task.
struct Replaying;

static REPLAYED: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

impl loky::Codec<SharedSliceMut<u32>> for Replaying {
    fn encode(value: &SharedSliceMut<u32>, out: &mut loky::AlignedVec) -> Result<(), String> {
        let mut own = loky::AlignedVec::new();
        <loky::Rkyv as loky::Codec<SharedSliceMut<u32>>>::encode(value, &mut own)?;
        let mut cached = REPLAYED.lock().unwrap();
        out.extend_from_slice(cached.get_or_insert_with(|| own.to_vec()));
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<SharedSliceMut<u32>, String> {
        <loky::Rkyv as loky::Codec<SharedSliceMut<u32>>>::decode(bytes)
    }
}

impl loky::Codec<()> for Replaying {
    fn encode(value: &(), out: &mut loky::AlignedVec) -> Result<(), String> {
        <loky::Rkyv as loky::Codec<()>>::encode(value, out)
    }
    fn decode(bytes: &[u8]) -> Result<(), String> {
        <loky::Rkyv as loky::Codec<()>>::decode(bytes)
    }
}

/// A codec with another bug: it decodes a handle twice.
struct DecodingTwice;

impl loky::Codec<SharedSliceMut<u32>> for DecodingTwice {
    fn encode(value: &SharedSliceMut<u32>, out: &mut loky::AlignedVec) -> Result<(), String> {
        <loky::Rkyv as loky::Codec<SharedSliceMut<u32>>>::encode(value, out)
    }
    fn decode(bytes: &[u8]) -> Result<SharedSliceMut<u32>, String> {
        let _first = <loky::Rkyv as loky::Codec<SharedSliceMut<u32>>>::decode(bytes)?;
        // Refused right here, not only once the decoder returns: it could
        // otherwise write through both.
        <loky::Rkyv as loky::Codec<SharedSliceMut<u32>>>::decode(bytes)?;
        Err("a second writer of the same elements was made, alive with the first".into())
    }
}

impl loky::Codec<()> for DecodingTwice {
    fn encode(value: &(), out: &mut loky::AlignedVec) -> Result<(), String> {
        <loky::Rkyv as loky::Codec<()>>::encode(value, out)
    }
    fn decode(bytes: &[u8]) -> Result<(), String> {
        <loky::Rkyv as loky::Codec<()>>::decode(bytes)
    }
}

#[test]
fn a_worker_takes_only_the_handles_sent_with_its_task() {
    bounded(60, || {
        let ex = pool(1);
        let mut v = SharedVec::<u32>::zeroed(&ex, 32).unwrap();
        let (a, b) = {
            let mut halves = v.chunks_mut(16).unwrap();
            (halves.next().unwrap(), halves.next().unwrap())
        };
        let replaying = ex.with_codec::<Replaying>();
        let fill = |mut s: SharedSliceMut<u32>| {
            let n = s.len() as u32;
            s.fill(n)
        };
        replaying.submit(fill, a).unwrap().result().unwrap();
        // The second task gets the first one's bytes: a handle to the first
        // half, which no task holds any more.
        let replayed = replaying.submit(|mut s: SharedSliceMut<u32>| s.fill(99), b);
        match replayed.unwrap().result() {
            Err(Error::Codec { message, .. }) => {
                assert!(message.contains("did not send with this task"), "{message}")
            }
            other => panic!("a replayed handle was accepted: {other:?}"),
        }
        assert!(v.as_slice()[..16].iter().all(|&x| x == 16));
        assert!(v.as_slice()[16..].iter().all(|&x| x == 0));

        // Two writable handles to the same elements: the task does not run.
        let twice = ex.with_codec::<DecodingTwice>();
        let whole = v.slice_mut(..).unwrap();
        match twice.submit(fill, whole).unwrap().result() {
            Err(Error::Codec { message, .. }) => {
                assert!(message.contains("two handles to the same"), "{message}")
            }
            other => panic!("a handle decoded twice was accepted: {other:?}"),
        }
        assert!(v.as_slice()[16..].iter().all(|&x| x == 0));
        // Many handles in one task, overlapping only where reading: fine.
        let reads: Vec<SharedSlice<u32>> = (0..2000).map(|i| v.slice(i % 32..).unwrap()).collect();
        let n = ex
            .submit(
                |r: Vec<SharedSlice<u32>>| r.iter().map(|s| s.len()).sum::<usize>(),
                reads,
            )
            .unwrap();
        assert_eq!(
            n.result().unwrap(),
            (0..2000).map(|i| 32 - i % 32).sum::<usize>()
        );
    });
}

/// The peak resident set of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_large_map_shared_argument_is_held_once_not_once_per_task() {
    // Alone in its own process: the peak resident set is the process's.
    const CHILD: &str = "LOKY_TEST_LARGE_ARGUMENT_CHILD";
    if std::env::var_os(CHILD).is_none() {
        support::rerun_in_child(
            "a_large_map_shared_argument_is_held_once_not_once_per_task",
            CHILD,
            "1",
            |_| {},
        );
        return;
    }
    let ex = pool(2);
    // 4096 elements: 8 tasks (4 per worker).
    let input = SharedVec::from_iter_in(&ex, 0..4096u32).unwrap();
    let table: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let expect: Vec<u32> = (0..4096u32)
        .map(|x| x + u32::from(table[x as usize * 7]))
        .collect();
    let before = peak_rss_kib();
    let f = |x: u32, table: &Vec<u8>| x + u32::from(table[x as usize * 7]);
    let out = ex.map_shared_with(f, &input, table).unwrap();
    let grew_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(out.as_slice(), &expect[..]);
    // Its encoding and its copy in the arena: about 64 MiB. Once per task
    // (8 of them) it was over 256 MiB.
    assert!(grew_mib < 128, "the parent's peak grew by {grew_mib} MiB");
    println!("CHILD OK");
}
