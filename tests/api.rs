//! The executor API, end to end: every call the core provides, against
//! real worker processes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use loky::{as_completed, wait, Error, ProcessPoolExecutor, ReturnWhen, Waitable};

mod support;
use support::{wait_for_gate, wait_running, Gate};

/// Generous bound used only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(60);

fn pool(n: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(n)
        .build()
        .expect("pool")
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The pid of the worker that runs the next task.
fn worker_pid(ex: &ProcessPoolExecutor) -> u32 {
    ex.submit(|_: ()| std::process::id(), ())
        .unwrap()
        .result_timeout(HANG)
        .unwrap()
}

#[test]
fn submit_runs_in_another_process() {
    let ex = pool(2);
    let pid = worker_pid(&ex);
    assert_ne!(pid, std::process::id());
    assert_eq!(ex.submit(|x: u64| x + 1, 41).unwrap().result().unwrap(), 42);
}

#[test]
fn fn_items_closures_and_rich_types() {
    fn describe(p: (String, Vec<f64>)) -> String {
        format!("{}:{}", p.0, p.1.iter().sum::<f64>())
    }
    let ex = pool(1);
    let f = ex
        .submit(describe, ("sum".to_string(), vec![1.0, 2.5]))
        .unwrap();
    assert_eq!(f.result().unwrap(), "sum:3.5");
    let opt = ex
        .submit(|v: Option<Vec<u8>>| v.map(|v| v.len()), Some(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(opt.result().unwrap(), Some(3));
}

#[test]
fn map_is_ordered_and_uses_all_workers() {
    let ex = pool(3);
    let out: Vec<u64> = ex
        .map(|x: u64| x * 2, 0..10_000)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(out, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
    let pids: BTreeSet<u32> = ex
        .map(
            |_: u64| {
                (
                    std::thread::sleep(Duration::from_millis(20)),
                    std::process::id(),
                )
                    .1
            },
            0..30,
        )
        .chunksize(1)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pids.len(), 3, "every worker took part");
}

#[test]
fn map_with_explicit_chunksize_and_empty_input() {
    let ex = pool(2);
    let out: Vec<i32> = ex
        .map(|x: i32| -x, vec![1, 2, 3, 4, 5])
        .chunksize(2)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(out, vec![-1, -2, -3, -4, -5]);
    let none: Vec<i32> = ex
        .map(|x: i32| x, Vec::<i32>::new())
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn map_unordered_yields_every_position_once() {
    let ex = pool(2);
    let mut seen: Vec<(usize, u64)> = ex
        .map_unordered(|x: u64| x + 100, 0..500)
        .chunksize(7)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..500).map(|i| (i as usize, i + 100)).collect::<Vec<_>>()
    );
}

#[test]
fn map_over_a_million_items_keeps_bounded_in_flight() {
    let ex = pool(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let input = (0..1_000_000u64).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = ex.map(|x: u64| x ^ 1, input).chunksize(1000);
    let mut max_ahead = 0;
    let mut count = 0u64;
    while let Some(r) = it.next() {
        assert_eq!(r.unwrap(), count ^ 1);
        count += 1;
        max_ahead = max_ahead.max(pulled.load(Ordering::Relaxed) - count as usize);
        // 2 workers x 2 chunks running or waiting in them, and up to 8
        // times that held in all (finished ones waiting to be read).
        assert!(it.chunks_in_flight() <= 32);
    }
    assert_eq!(count, 1_000_000);
    // 32 chunks x 1000 items, plus the chunk being consumed.
    assert!(
        max_ahead <= 33 * 1000,
        "input read {max_ahead} items ahead of the consumer"
    );
}

#[test]
fn map_is_lazy_until_iterated() {
    let ex = pool(1);
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let it = ex.map(
        |x: u64| x,
        (0..10u64).inspect(move |_| {
            p.fetch_add(1, Ordering::Relaxed);
        }),
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pulled.load(Ordering::Relaxed), 0);
    drop(it);
}

#[test]
fn panics_become_task_panicked_and_the_worker_lives() {
    let ex = pool(1);
    let pid = worker_pid(&ex);
    let err = ex
        .submit(|x: u32| -> u32 { panic!("bad input {x}") }, 7)
        .unwrap()
        .result()
        .unwrap_err();
    match err {
        Error::TaskPanicked {
            message, location, ..
        } => {
            assert_eq!(message, "bad input 7");
            assert!(location.contains("api.rs"), "{location}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Same worker, still alive.
    assert_eq!(worker_pid(&ex), pid);
}

#[test]
fn into_vec_is_collect_and_returns_the_first_error_in_input_order() {
    let ex = pool(2);
    let f = |x: u64| x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in [1, 7, 4096] {
        let fast = ex.map(f, 0..20_000).chunksize(chunk).into_vec().unwrap();
        let slow: Vec<u64> = ex
            .map(f, 0..20_000)
            .chunksize(chunk)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(fast, slow, "chunksize {chunk}");
    }
    assert_eq!(
        ex.map(f, 0..100).into_vec().unwrap().len(),
        100,
        "automatic chunks"
    );
    assert!(ex.map(f, 0..0).into_vec().unwrap().is_empty());
    // Two bad items, the later one in an earlier-finishing chunk: the
    // error is the first one in input order, whatever finished first.
    let bad = |x: u64| -> u64 {
        match x {
            30 => {
                std::thread::sleep(Duration::from_millis(200));
                panic!("thirty")
            }
            70 => panic!("seventy"),
            x => x,
        }
    };
    for chunk in [1, 10, 64] {
        match ex.map(bad, 0..100).chunksize(chunk).into_vec() {
            Err(Error::TaskPanicked { message, .. }) => {
                assert_eq!(message, "thirty", "chunksize {chunk}")
            }
            other => panic!("chunksize {chunk}: {other:?}"),
        }
    }
    // An endless input ends at its first error (no room is reserved for
    // what its size hint claims).
    let stop = |x: u64| if x == 10 { panic!("ten") } else { x };
    assert!(matches!(
        ex.map(stop, 0u64..).chunksize(4).into_vec(),
        Err(Error::TaskPanicked { message, .. }) if message == "ten"
    ));
    // The rest of a map partly read.
    let mut map = ex.map(f, 0..1000).chunksize(64);
    assert_eq!(map.next().unwrap().unwrap(), 0);
    let rest = map.into_vec().unwrap();
    assert_eq!((rest.len(), rest[0]), (999, f(1)));
    // A chunk that failed whole (here its arguments could not be sent) is
    // an error too.
    ex.shutdown(true, false, false);
    assert!(matches!(
        ex.map(f, 0..10).into_vec(),
        Err(Error::ShutdownExecutor)
    ));
}

#[test]
fn a_panicking_item_fails_alone_in_its_chunk() {
    let ex = pool(2);
    let out: Vec<Result<u32, Error>> = ex
        .map(|x: u32| if x == 5 { panic!("five") } else { x }, 0..10)
        .chunksize(10)
        .collect();
    assert_eq!(out.len(), 10);
    for (i, r) in out.iter().enumerate() {
        if i == 5 {
            assert!(matches!(r, Err(Error::TaskPanicked { message, .. }) if message == "five"));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32);
        }
    }
}

#[test]
fn result_timeout_exception_done_running() {
    let ex = pool(1);
    // A worker that is up takes the task at once: it is running (handed to
    // a worker) from the submit on, rather than waiting in the parent for
    // the worker to start.
    worker_pid(&ex);
    let f = ex.submit(sleep_ms, 1000).unwrap();
    assert!(matches!(
        f.result_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
    assert!(!f.done());
    assert!(f.running());
    assert_eq!(f.result_timeout(HANG).unwrap(), 1000);
    assert!(f.done());
    assert!(!f.running());
    assert!(matches!(f.result(), Err(Error::ResultTaken)));
    let bad = ex.submit(|_: ()| -> u8 { panic!("x") }, ()).unwrap();
    assert!(matches!(bad.exception(), Some(Error::TaskPanicked { .. })));
    let good = ex.submit(|x: u8| x, 1).unwrap();
    assert!(good.exception().is_none());
    assert_eq!(good.result().unwrap(), 1);
}

#[test]
fn a_long_done_callback_on_the_manager_does_not_delay_other_results() {
    let ex = pool(2);
    let (tx, rx) = mpsc::channel();
    // Nobody waits on it: the manager thread publishes it, and runs the
    // callback.
    // The callback holds the manager until the measurements are done (or
    // the test fails: dropping `release` lets it go too).
    let (release, released) = mpsc::channel::<()>();
    let first = ex.submit(sleep_ms, 20).unwrap();
    first.add_done_callback(move |_| {
        tx.send(()).unwrap();
        let _ = released.recv();
    });
    rx.recv_timeout(HANG).unwrap();
    // Meanwhile results of 5 ms tasks (past the callers' spinning) reach
    // their waiter when they come, not at its next 100 ms nap.
    let mut waits: Vec<Duration> = (0..9)
        .map(|_| {
            let t = std::time::Instant::now();
            assert_eq!(ex.submit(sleep_ms, 5).unwrap().result().unwrap(), 5);
            t.elapsed()
        })
        .collect();
    release.send(()).unwrap();
    waits.sort();
    // Without the fix every wait took the 100 ms nap; a loaded machine may
    // make any wait slow, but not most of them.
    let napped = waits
        .iter()
        .filter(|w| **w >= Duration::from_millis(95))
        .count();
    assert!(napped <= waits.len() / 2, "waits {waits:?}");
}

#[test]
fn a_callback_on_the_manager_can_poll_another_future_with_a_callback() {
    let ex = pool(2);
    let other = Arc::new(ex.submit(sleep_ms, 50).unwrap());
    other.add_done_callback(|_| {});
    let (tx, rx) = mpsc::channel();
    let polled = other.clone();
    // Nobody waits on `first`: its callback runs on the manager, which is
    // then the thread that must publish `other` (callback included).
    let first = ex.submit(sleep_ms, 1).unwrap();
    first.add_done_callback(move |_| {
        let start = std::time::Instant::now();
        while !polled.done() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = tx.send(polled.done());
    });
    assert!(
        rx.recv_timeout(HANG).unwrap(),
        "`other` never became done for a callback polling it on the manager"
    );
}

#[test]
fn a_callback_can_wait_for_a_future_that_finished_with_its_own() {
    let ex = pool(2);
    for round in 0..10 {
        // Both finish at about the same time, on the two workers: the
        // manager often drains them in one batch, and runs `first`'s
        // callback while `second`, with a callback of its own, is still
        // in that batch.
        let first = ex.submit(sleep_ms, 50).unwrap();
        let second = Arc::new(ex.submit(sleep_ms, 50).unwrap());
        second.add_done_callback(|_| {});
        let (tx, rx) = mpsc::channel();
        let waited = second.clone();
        first.add_done_callback(move |_| {
            let _ = tx.send(waited.result_timeout(Duration::from_secs(5)));
        });
        let got = rx.recv_timeout(HANG).unwrap();
        assert_eq!(got.unwrap(), 50, "round {round}");
    }
}

#[test]
fn a_done_callback_waiting_for_its_own_future_gets_an_error() {
    let ex = pool(1);
    for already_done in [false, true] {
        // Long enough to be still running when the callback is added.
        let f = Arc::new(ex.submit(sleep_ms, 500).unwrap());
        if already_done {
            f.result_timeout(HANG).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let me = f.clone();
        f.add_done_callback(move |outcome| {
            let own = me.result_timeout(HANG);
            let exception = me.exception();
            let _ = tx.send((outcome.is_ok(), own, exception, me.done()));
        });
        let (ok, own, exception, done) = rx.recv_timeout(HANG).expect("the callback returns");
        assert_eq!(ok, !already_done, "the outcome it is given");
        assert!(matches!(own, Err(Error::InvalidArgument(_))), "{own:?}");
        // As in `concurrent.futures`, the task is finished before its
        // callbacks run: `done` and `exception` answer there.
        assert!(done, "done in its own callback");
        assert!(exception.is_none(), "{exception:?}");
        // Outside the callback the future works as before.
        assert!(f.exception_timeout(HANG).unwrap().is_none());
        assert!(f.done());
    }
}

#[test]
fn a_done_callback_waiting_on_a_set_with_its_own_future_finds_it_done() {
    let ex = pool(1);
    // The own future (index 0) runs first; the other one is queued behind
    // it on the single worker, so it finishes while the callback waits.
    let futs = Arc::new(vec![
        ex.submit(sleep_ms, 300).unwrap(),
        ex.submit(sleep_ms, 50).unwrap(),
    ]);
    let (tx, rx) = mpsc::channel();
    let set = futs.clone();
    futs[0].add_done_callback(move |_| {
        let waited = wait(&set, None, ReturnWhen::AllCompleted);
        let yielded: Vec<_> = as_completed(&set, None)
            .map(|f| f.map(|f| f.id()))
            .collect();
        let _ = tx.send((waited, yielded));
    });
    let (waited, yielded) = rx.recv_timeout(HANG).expect("the callback returns");
    // Its own future is done already (finished before its callbacks ran).
    assert_eq!(waited.done, vec![0, 1]);
    assert!(waited.not_done.is_empty());
    let ids: BTreeSet<u64> = yielded.into_iter().map(|f| f.unwrap()).collect();
    assert_eq!(ids, futs.iter().map(|f| f.id()).collect());
    // Outside the callback both finish as usual.
    assert_eq!(
        wait(&futs, Some(HANG), ReturnWhen::AllCompleted).done,
        vec![0, 1]
    );
}

#[test]
fn callbacks_see_their_task_finished_and_counted() {
    // A scheduler's join: the callback of each of two inputs starts the
    // next task once both are done. Each callback sees its own future
    // done, so exactly one of them (or both, counted once) starts it.
    let ex = Arc::new(pool(2));
    for round in 0..20 {
        let a = Arc::new(ex.submit(sleep_ms, 10 + round % 3).unwrap());
        let b = Arc::new(ex.submit(sleep_ms, 10).unwrap());
        let started = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for (me, other) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let (started, tx, me2, ex) = (started.clone(), tx.clone(), me.clone(), ex.clone());
            me.add_done_callback(move |_| {
                let stats = ex.stats();
                let _ = tx.send((me2.done(), me2.exception().is_none(), stats.completed));
                if me2.done() && other.done() && started.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = tx.send((true, true, u64::MAX));
                }
            });
        }
        drop(tx);
        let seen: Vec<_> = rx.iter().collect();
        let joins = seen.iter().filter(|s| s.2 == u64::MAX).count();
        assert_eq!(joins, 1, "round {round}: the join starts once: {seen:?}");
        for (done, clean, completed) in seen.iter().filter(|s| s.2 != u64::MAX) {
            assert!(done, "round {round}: done in its own callback");
            assert!(clean, "round {round}: no exception");
            assert!(
                *completed >= 1,
                "round {round}: counted before its callback"
            );
        }
    }
}

#[test]
fn callbacks_added_at_once_after_the_end_all_see_the_value() {
    // Added after completion from several threads at once, while others
    // look at the value: none is told it was taken.
    let ex = pool(1);
    for _ in 0..20 {
        let f = Arc::new(ex.submit(|x: u64| x * 3, 7).unwrap());
        assert!(f.exception_timeout(HANG).unwrap().is_none());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (f, seen) = (f.clone(), seen.clone());
                s.spawn(move || {
                    for _ in 0..10 {
                        let seen = seen.clone();
                        f.add_done_callback(move |r| {
                            std::thread::sleep(Duration::from_micros(200));
                            seen.lock().unwrap().push(r.as_ref().ok().copied());
                        });
                    }
                });
            }
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 40);
        assert!(seen.iter().all(|v| *v == Some(21)), "{seen:?}");
        assert_eq!(f.result().unwrap(), 21, "the value is back once they ran");
    }
}

#[test]
fn a_done_callback_awaiting_its_own_future_gets_an_error() {
    let ex = pool(1);
    let slot = Arc::new(std::sync::Mutex::new(None::<loky::Future<u64>>));
    let f = ex.submit(sleep_ms, 300).unwrap();
    let (tx, rx) = mpsc::channel();
    let mine = slot.clone();
    f.add_done_callback(move |_| {
        let Some(me) = mine.lock().unwrap().take() else {
            let _ = tx.send(None);
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = tx.send(Some(rt.block_on(me)));
    });
    *slot.lock().unwrap() = Some(f);
    let got = rx.recv_timeout(HANG).expect("the callback returns");
    let got = got.expect("the future was in the slot before it finished");
    assert!(matches!(got, Err(Error::InvalidArgument(_))), "{got:?}");
}

/// [`support::short_tasks_done_beside_a_held_one`] on a pool of two.
fn short_tasks_done_beside_a_held_one(prefetch: bool) -> usize {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .prefetch(prefetch)
        .build()
        .unwrap();
    support::short_tasks_done_beside_a_held_one(&ex, &format!("prefetch-{prefetch}"))
}

#[test]
fn without_prefetch_short_tasks_never_wait_behind_a_long_one() {
    assert_eq!(short_tasks_done_beside_a_held_one(false), 4);
}

#[test]
fn with_prefetch_a_task_may_wait_behind_a_long_one() {
    // The documented price of prefetching (the default): the task handed
    // to the held worker's ring waits for it.
    assert!(short_tasks_done_beside_a_held_one(true) < 4);
}

/// Item 0 waits on the gate; the others return at once.
fn first_waits_on_gate((gate, x): (String, u64)) -> u64 {
    if x == 0 {
        wait_for_gate(gate);
    }
    x
}

#[test]
fn an_ordered_map_keeps_the_workers_busy_while_its_oldest_chunk_runs() {
    let ex = pool(2);
    let gate = Gate::closed("ordered-oldest");
    let path = gate.path();
    let reader = {
        let ex = ex.clone();
        std::thread::spawn(move || {
            let items = (0..40u64).map(move |x| (path.clone(), x));
            ex.map(first_waits_on_gate, items)
                .chunksize(1)
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        })
    };
    // The reader blocks on item 0 (its first next()); meanwhile the other
    // worker runs far more than the 3 chunks the window holds besides it.
    let s = support::wait_for_stats("chunks behind the oldest", &ex, HANG, |s| s.completed >= 10);
    assert!(!reader.is_finished(), "{s:?}");
    gate.open();
    assert_eq!(reader.join().unwrap(), (0..40).collect::<Vec<u64>>());
}

#[test]
fn duration_max_means_no_deadline() {
    let ex = pool(1);
    let f = ex.submit_with_timeout(sleep_ms, 20, Duration::MAX).unwrap();
    assert_eq!(f.result_timeout(Duration::MAX).unwrap(), 20);
    let f = ex.submit(sleep_ms, 1).unwrap();
    assert!(f.exception_timeout(Duration::MAX).unwrap().is_none());
    let futs = vec![ex.submit(sleep_ms, 1).unwrap()];
    let done = wait(&futs, Some(Duration::MAX), ReturnWhen::AllCompleted);
    assert_eq!(done.done.len(), 1);
    assert_eq!(as_completed(&futs, Some(Duration::MAX)).count(), 1);
}

#[test]
fn cancel_only_before_start() {
    let ex = pool(1);
    // Fill the single worker (depth 2), then queue more.
    let busy: Vec<_> = (0..2).map(|_| ex.submit(sleep_ms, 200).unwrap()).collect();
    wait_running(&busy[1]);
    let queued = ex.submit(sleep_ms, 1).unwrap();
    assert!(!queued.running());
    assert!(queued.cancel());
    assert!(queued.cancelled());
    assert!(queued.done());
    assert!(matches!(queued.result(), Err(Error::Cancelled)));
    assert!(!busy[0].cancel(), "a running task cannot be cancelled");
    for b in &busy {
        assert_eq!(b.result_timeout(HANG).unwrap(), 200);
    }
    assert_eq!(ex.stats().cancelled, 1);
}

#[test]
fn done_callbacks_run_exactly_once_before_and_after_completion() {
    let ex = pool(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let f = ex.submit(sleep_ms, 50).unwrap();
    let c = calls.clone();
    f.add_done_callback(move |r| {
        c.fetch_add(1, Ordering::SeqCst);
        tx.send(*r.as_ref().unwrap()).unwrap();
    });
    assert_eq!(rx.recv_timeout(HANG).unwrap(), 50);
    assert_eq!(f.result().unwrap(), 50);
    // Added after completion (and after the value was taken): runs at once.
    let c = calls.clone();
    f.add_done_callback(move |r| {
        assert!(matches!(r, Err(Error::ResultTaken)));
        c.fetch_add(1, Ordering::SeqCst);
    });
    let g = ex.submit(|x: u64| x, 9).unwrap();
    g.result_timeout(HANG).ok();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn panicking_callback_is_contained() {
    let ex = pool(1);
    let f = ex.submit(|x: u64| x, 5).unwrap();
    f.add_done_callback(|_| panic!("callback bug"));
    assert_eq!(f.result_timeout(HANG).unwrap(), 5);
    assert_eq!(
        ex.submit(|x: u64| x + 1, 5)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        6
    );
}

#[test]
fn callback_that_submits_more_work_does_not_deadlock() {
    let ex = pool(2);
    let (tx, rx) = mpsc::channel();
    let ex2 = ex.clone();
    let f = ex.submit(|x: u64| x + 1, 1).unwrap();
    f.add_done_callback(move |r| {
        let v = *r.as_ref().unwrap();
        let g = ex2.submit(|x: u64| x * 10, v).unwrap();
        // Waiting inside a callback must not deadlock either.
        tx.send(g.result_timeout(HANG)).unwrap();
    });
    assert_eq!(rx.recv_timeout(HANG).unwrap().unwrap(), 20);
}

#[test]
fn await_from_tokio_without_blocking() {
    let ex = pool(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let v = rt.block_on(async {
        let a = ex.submit(|x: u64| x * 3, 5).unwrap();
        let b = ex.submit(sleep_ms, 100).unwrap();
        let ticker = async {
            // Runs concurrently on the same single thread: the future does
            // not block it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        let (a, b, t) = tokio::join!(a, b, ticker);
        (a.unwrap(), b.unwrap(), t)
    });
    assert_eq!(v, (15, 100, 7));
}

#[test]
fn eight_threads_submit_concurrently() {
    let ex = pool(2);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let ex = &ex;
            s.spawn(move || {
                let futs: Vec<_> = (0..200u64)
                    .map(|i| ex.submit(|x: u64| x * 2, t * 1000 + i).unwrap())
                    .collect();
                for (i, f) in futs.into_iter().enumerate() {
                    assert_eq!(f.result_timeout(HANG).unwrap(), (t * 1000 + i as u64) * 2);
                }
            });
        }
    });
    assert_eq!(ex.stats().completed, 1600);
}

#[test]
fn wait_all_first_and_first_exception() {
    let ex = pool(2);
    let futs = vec![
        ex.submit(sleep_ms, 10).unwrap(),
        ex.submit(sleep_ms, 400).unwrap(),
    ];
    let r = wait(&futs, Some(HANG), ReturnWhen::FirstCompleted);
    assert_eq!(r.done, vec![0]);
    assert_eq!(r.not_done, vec![1]);
    let r = wait(&futs, None, ReturnWhen::AllCompleted);
    assert_eq!(r.done, vec![0, 1]);

    let futs = vec![
        ex.submit(
            |x: u64| -> u64 {
                if x == 1 {
                    panic!("boom")
                } else {
                    sleep_ms(x)
                }
            },
            1,
        )
        .unwrap(),
        ex.submit(
            |x: u64| -> u64 {
                if x == 1 {
                    panic!("boom")
                } else {
                    sleep_ms(x)
                }
            },
            2000,
        )
        .unwrap(),
    ];
    let r = wait(&futs, Some(HANG), ReturnWhen::FirstException);
    assert_eq!(r.done, vec![0]);
    assert_eq!(r.not_done, vec![1]);
}

#[test]
fn wait_times_out() {
    let ex = pool(1);
    let futs = vec![ex.submit(sleep_ms, 500).unwrap()];
    let r = wait(
        &futs,
        Some(Duration::from_millis(20)),
        ReturnWhen::AllCompleted,
    );
    assert!(r.done.is_empty());
    assert_eq!(r.not_done, vec![0]);
}

#[test]
fn as_completed_in_completion_order_and_with_timeout() {
    let ex = pool(2);
    let futs = vec![
        ex.submit(sleep_ms, 300).unwrap(),
        ex.submit(sleep_ms, 10).unwrap(),
    ];
    let order: Vec<u64> = as_completed(&futs, Some(HANG))
        .map(|f| f.unwrap().id())
        .collect();
    assert_eq!(order, vec![futs[1].id(), futs[0].id()]);

    let futs = vec![
        ex.submit(sleep_ms, 1).unwrap(),
        ex.submit(sleep_ms, 1000).unwrap(),
    ];
    let got: Vec<_> = as_completed(&futs, Some(Duration::from_millis(300))).collect();
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ok());
    assert!(matches!(got[1], Err(Error::Timeout)));
}

/// A wait over futures of two pools returns when the first finishes, in
/// whichever pool: it sleeps on one pool's doorbell, which the other's
/// finish rings, beside that pool's own waiter. (Each ring woke one of the
/// two, so most waits slept a whole 100 ms nap.)
#[test]
fn a_wait_over_two_pools_wakes_for_the_first_finish_in_either() {
    let (a, b) = (pool(1), pool(1));
    a.submit(sleep_ms, 0).unwrap().result().unwrap();
    b.submit(sleep_ms, 0).unwrap().result().unwrap();
    let mut late = Vec::new();
    for _ in 0..8 {
        let slow = a.submit(sleep_ms, 300).unwrap();
        let quick = b.submit(sleep_ms, 20).unwrap();
        let start = Instant::now();
        let both: [&dyn Waitable; 2] = [&slow, &quick];
        let r = wait(&both, Some(HANG), ReturnWhen::FirstCompleted);
        let took = start.elapsed();
        assert_eq!(r.done, vec![1]);
        if took > Duration::from_millis(60) {
            late.push(took);
        }
        slow.result().unwrap();
    }
    // A late round or two is load on a shared machine; more is the lost
    // wake (it made 6 rounds in 8 wait out the 100 ms nap).
    assert!(
        late.len() <= 2,
        "waits that overslept the 20 ms task: {late:?}"
    );
}

/// A map read inside a done-callback (on the pool's manager thread, which
/// nobody else drains for) drains the pool itself while it waits for its
/// chunks: it slept on a condition nobody would signal, 100 ms a chunk.
#[test]
fn a_map_read_in_a_done_callback_keeps_its_pace() {
    let ex = pool(2);
    let (tx, rx) = mpsc::channel();
    let inner = ex.clone();
    let trigger = ex.submit(sleep_ms, 50).unwrap();
    trigger.add_done_callback(move |_| {
        let start = Instant::now();
        // Chunks of 2 ms: longer than a spin, so waiting means sleeping.
        let ordered: u64 = inner
            .map(sleep_ms, (0..40).map(|_| 2u64))
            .chunksize(1)
            .map(Result::unwrap)
            .sum();
        let unordered: u64 = inner
            .map_unordered(sleep_ms, (0..40).map(|_| 2u64))
            .chunksize(1)
            .map(|(_, r)| r.unwrap())
            .sum();
        let _ = tx.send((ordered, unordered, start.elapsed()));
    });
    let (ordered, unordered, took) = rx.recv_timeout(HANG).expect("the callback's maps end");
    assert_eq!((ordered, unordered), (80, 80));
    // About 80 ms of work on 2 workers.
    assert!(
        took < Duration::from_millis(1500),
        "80 chunks took {took:?}"
    );
}

/// `kill` of a running task waits for the outcome without running
/// done-callbacks on the killing thread: a scheduler kills under the lock
/// of its task table, and each task's callback takes that lock to remove
/// it. (A task stopped before it started runs its callbacks on the
/// stopping thread, as `concurrent.futures`' `cancel` does.)
#[test]
fn killing_a_running_task_runs_no_done_callback_on_the_killing_thread() {
    let ex = pool(1);
    let table = Arc::new(std::sync::Mutex::new(0u32));
    // Never opened: the task runs until it is killed.
    let hold = Gate::closed("kill-cb-hold");
    for _ in 0..5 {
        let started = Gate::closed("kill-cb-started");
        let f = ex
            .submit(support::mark_start_then_wait, (started.path(), hold.path()))
            .unwrap();
        while !started.is_open() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = mpsc::channel();
        let t = table.clone();
        f.add_done_callback(move |_| {
            *t.lock().unwrap() += 1;
            let _ = tx.send(std::thread::current().id());
        });
        let (report, reported) = mpsc::channel();
        let table_ = table.clone();
        std::thread::spawn(move || {
            let _held = table_.lock().unwrap();
            let killed = f.kill();
            let _ = report.send((killed, f.done(), std::thread::current().id()));
        });
        // A callback run inside kill() would wait for the lock its own
        // thread holds: the killer never reports.
        let (killed, done, killer_id) = reported
            .recv_timeout(HANG)
            .expect("kill() deadlocked on a done-callback");
        assert!(killed && done);
        let ran_on = rx.recv_timeout(HANG).expect("the callback ran");
        assert_ne!(ran_on, killer_id, "the callback ran inside kill()");
    }
    assert_eq!(*table.lock().unwrap(), 5);
}

/// A scheduler keeps tasks of mixed result types as `dyn Waitable`, and
/// stops them through it: `cancel` a queued one, `kill` a running one.
#[test]
fn dyn_waitable_cancels_and_kills_tasks_of_any_result_type() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .prefetch(false)
        .build()
        .unwrap();
    let running = ex.submit(sleep_ms, 10_000).unwrap();
    wait_running(&running);
    let queued = ex
        .submit(|s: String| s.len(), "never runs".to_owned())
        .unwrap();
    let table: Vec<Arc<dyn Waitable>> = vec![Arc::new(running), Arc::new(queued)];
    assert_ne!(table[0].id(), table[1].id());
    assert!(!table[0].cancel(), "a running task is not cancelled");
    assert!(table[1].cancel(), "a queued one is");
    assert!(table[1].done());
    let start = Instant::now();
    assert!(table[0].kill());
    assert!(table[0].done(), "kill returns with the future ended");
    assert!(start.elapsed() < Duration::from_secs(5));
    let r = wait(&table, Some(HANG), ReturnWhen::AllCompleted);
    assert_eq!(r.done, vec![0, 1]);
    assert_eq!(ex.submit(sleep_ms, 1).unwrap().result().unwrap(), 1);
}

/// A scheduler's tasks have different result types, and may live in
/// different pools: `&dyn Waitable` puts them in one slice.
#[test]
fn wait_and_as_completed_mix_result_types_and_pools() {
    let (a, b) = (pool(1), pool(1));
    let slow_name = a
        .submit(|ms: u64| format!("slept {}", sleep_ms(ms)), 600)
        .unwrap();
    let quick_flag = b.submit(|ms: u64| sleep_ms(ms) > 5, 10).unwrap();
    let boom = b
        .submit(
            |x: u8| -> u8 {
                sleep_ms(150);
                panic!("boom {x}")
            },
            3,
        )
        .unwrap();
    let all: [&dyn Waitable; 3] = [&slow_name, &quick_flag, &boom];
    let r = wait(&all, Some(HANG), ReturnWhen::FirstCompleted);
    assert_eq!((r.done, r.not_done), (vec![1], vec![0, 2]));
    let r = wait(&all, Some(HANG), ReturnWhen::FirstException);
    assert_eq!((r.done, r.not_done), (vec![1, 2], vec![0]));
    let r = wait(
        &all,
        Some(Duration::from_millis(1)),
        ReturnWhen::AllCompleted,
    );
    assert_eq!(r.not_done, vec![0], "the 600 ms task is still running");

    let mut order = as_completed(&all, Some(HANG));
    let mut seen = Vec::new();
    while let Some(i) = order.next_index() {
        seen.push(i.unwrap());
    }
    // Done ones first, in the order they were seen, then the slow one.
    assert_eq!(seen.last(), Some(&0));
    assert_eq!(seen.len(), 3);
    assert_eq!(slow_name.result().unwrap(), "slept 600");
    assert!(quick_flag.result().unwrap());
    assert!(matches!(boom.result(), Err(Error::TaskPanicked { .. })));

    // References to typed futures work as well, and shared ones.
    let refs = [&slow_name];
    assert!(matches!(
        as_completed(&refs, Some(HANG)).next(),
        Some(Ok(f)) if f.id() == slow_name.id()
    ));
    // Shared ones too, and from another thread.
    let shared: Vec<Arc<dyn Waitable>> = vec![Arc::new(a.submit(sleep_ms, 1).unwrap())];
    let waiter = std::thread::spawn(move || wait(&shared, Some(HANG), ReturnWhen::AllCompleted));
    assert_eq!(waiter.join().unwrap().done, [0]);
}

#[test]
fn wait_and_as_completed_over_many_futures_see_each_once() {
    let ex = pool(2);
    const N: u64 = 20_000;
    let futs: Vec<_> = (0..N).map(|i| ex.submit(|x: u64| x, i).unwrap()).collect();
    let mut seen = vec![false; N as usize];
    for f in as_completed(&futs, Some(HANG)) {
        let v = f.unwrap().result().unwrap();
        assert!(!std::mem::replace(&mut seen[v as usize], true), "{v} twice");
    }
    assert!(seen.iter().all(|&s| s));
    let futs: Vec<_> = (0..N).map(|i| ex.submit(|x: u64| x, i).unwrap()).collect();
    let r = wait(&futs, Some(HANG), ReturnWhen::AllCompleted);
    assert_eq!(r.done, (0..N as usize).collect::<Vec<_>>());
    assert!(r.not_done.is_empty());
}

#[test]
fn as_completed_over_two_pools_yields_in_completion_order() {
    // The waiter sleeps on the first future's pool; the other pool's
    // result comes first.
    let (a, b) = (pool(1), pool(1));
    let futs = vec![
        a.submit(sleep_ms, 2000).unwrap(),
        b.submit(sleep_ms, 20).unwrap(),
    ];
    let first = as_completed(&futs, Some(HANG)).next().unwrap().unwrap();
    assert!(std::ptr::eq(first, &futs[1]));
    assert!(!futs[0].done());
    let r = wait(&futs, Some(HANG), ReturnWhen::FirstCompleted);
    assert_eq!(r.done, vec![1]);
}

#[test]
fn a_callback_on_a_pool_thread_can_wait_on_futures_of_two_pools() {
    // The callback runs on pool B's manager thread, which alone drains B's
    // results while nobody else waits on them: waiting there on a slow
    // future of pool A and a quick one of B must still see B's.
    let (a, b) = (pool(1), pool(1));
    let slow = a.submit(sleep_ms, 3000).unwrap();
    let trigger = b.submit(sleep_ms, 1).unwrap();
    let (tx, rx) = mpsc::channel();
    let b2 = b.clone();
    let slow2 = std::sync::Mutex::new(Some(slow));
    trigger.add_done_callback(move |_| {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let slow = slow2.lock().unwrap().take().unwrap();
        let quick = b2.submit(sleep_ms, 5).unwrap();
        let futs = vec![slow, quick];
        let r = wait(&futs, Some(HANG), ReturnWhen::FirstCompleted);
        let _ = tx.send((thread, r.done));
    });
    let (thread, done) = rx.recv_timeout(HANG).unwrap();
    assert!(
        thread.starts_with("loky-"),
        "ran on {thread:?}, not a pool thread"
    );
    assert_eq!(done, vec![1], "the quick future of the callback's own pool");
    a.shutdown(true, true, true); // not waiting for the slow one
}

/// A task that never ends by itself, with time limit `limit`.
fn endless_with_limit(ex: &ProcessPoolExecutor, limit: Duration) -> loky::Future<()> {
    ex.submit_with_timeout::<_, _, ()>(
        |_: ()| loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        (),
        limit,
    )
    .unwrap()
}

#[test]
fn time_limits_still_fall_while_a_callback_on_the_manager_waits() {
    // The callback runs on the manager thread (nobody else waits on the
    // trigger) and blocks on a task that never ends by itself: its time
    // limit must still fall, though the manager, which watches the time
    // limits, is inside the callback.
    let ex = pool(2);
    let trigger = ex.submit(sleep_ms, 200).unwrap();
    let endless = endless_with_limit(&ex, Duration::from_millis(300));
    let (tx, rx) = mpsc::channel();
    let endless = std::sync::Mutex::new(Some(endless));
    trigger.add_done_callback(move |_| {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let endless = endless.lock().unwrap().take().unwrap();
        let outcome = endless.result_timeout(HANG);
        // `result_timeout` giving up would be a Timeout too: the task's own
        // one is the one that came long before.
        let _ = tx.send((thread, outcome, endless.done()));
    });
    let (thread, outcome, done) = rx.recv_timeout(2 * HANG).unwrap();
    assert!(done, "the task's time limit never fell");
    assert!(
        thread.starts_with("loky-"),
        "ran on {thread:?}, not a pool thread"
    );
    assert!(
        matches!(outcome, Err(Error::TimeLimit)),
        "got {outcome:?} instead of the time limit"
    );
}

#[test]
fn time_limits_still_fall_while_a_callback_on_the_manager_waits_on_another_pool() {
    // As above, but the callback waits on a future of another pool: the
    // manager must keep watching its own pool's time limits meanwhile.
    let (ex, other) = (pool(2), pool(1));
    let trigger = ex.submit(sleep_ms, 200).unwrap();
    let endless = endless_with_limit(&ex, Duration::from_millis(300));
    let slow = other.submit(sleep_ms, 2000).unwrap();
    let (tx, rx) = mpsc::channel();
    let held = std::sync::Mutex::new(Some((slow, endless)));
    trigger.add_done_callback(move |_| {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let (slow, endless) = held.lock().unwrap().take().unwrap();
        let slow = slow.result_timeout(HANG);
        // Checked before the callback returns: the manager is still in it.
        let _ = tx.send((thread, slow, endless.done()));
    });
    let (thread, slow, limit_fell) = rx.recv_timeout(2 * HANG).unwrap();
    assert!(
        thread.starts_with("loky-"),
        "ran on {thread:?}, not a pool thread"
    );
    assert_eq!(slow.unwrap(), 2000);
    assert!(
        limit_fell,
        "the time limit did not fall while the callback waited"
    );
}

#[test]
fn dropping_a_map_cancels_its_chunks_still_waiting_in_the_parent() {
    let ex = pool(1);
    let pid = worker_pid(&ex);
    let (hold, tail) = (Gate::closed("map-hold"), Gate::closed("map-tail"));
    // The one worker (which holds two tasks: one running, one waiting in
    // its ring) is kept busy by tasks outside the map, so that when the
    // map is dropped one of its chunks waits in the parent.
    let first = ex.submit(wait_for_gate, hold.path()).unwrap();
    // Chunk 0 passes at once, the others mark their start, then wait for
    // the tail gate.
    let started = std::env::temp_dir().join(format!("loky-map-started-{}", std::process::id()));
    let _ = std::fs::remove_file(&started);
    let mark = started.to_string_lossy().into_owned();
    let items = [
        (String::new(), String::new()),
        (mark.clone(), tail.path()),
        (mark.clone(), tail.path()),
        (mark, tail.path()),
    ];
    let mut map = ex.map(support::mark_start_then_wait, items).chunksize(1);
    let puller = std::thread::spawn(move || {
        // Sends chunks 0 (into the worker's ring) and 1 (queued in the
        // parent), then waits for 0.
        let item = map.next();
        (item, map)
    });
    support::wait_for_stats("chunk 1 queued in the parent", &ex, HANG, |s| {
        (s.running, s.queued) == (2, 1)
    });
    // Queued behind chunk 1: the worker takes it after chunk 0, so that
    // chunk 2, sent once chunk 0 is consumed, waits in the parent.
    let second = ex.submit(wait_for_gate, tail.path()).unwrap();
    hold.open();
    let (item, map) = puller.join().unwrap();
    assert_eq!(item.unwrap().unwrap(), 1);
    // The worker runs chunk 1 and holds `second` behind it, both waiting
    // for the tail gate: the one task in the parent is chunk 2.
    let before = support::wait_for_stats("chunk 2 queued in the parent", &ex, HANG, |s| {
        (s.running, s.queued) == (2, 1)
    });
    // Started, not only at the front of the worker's ring (where the drop
    // would withdraw it).
    let start = std::time::Instant::now();
    while !started.exists() {
        assert!(start.elapsed() < HANG, "chunk 1 never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&started);
    drop(map);
    // Taken out of the parent's queue, not from the worker (whose ring is
    // full of tasks that wait): no worker took it meanwhile.
    let after = ex.stats();
    assert_eq!(
        (
            after.queued,
            after.running,
            after.cancelled - before.cancelled
        ),
        (0, 2, 1),
        "{after:?}"
    );
    tail.open();
    assert_eq!(first.result_timeout(HANG).unwrap(), 1);
    assert_eq!(second.result_timeout(HANG).unwrap(), 1);
    assert_eq!(worker_pid(&ex), pid, "the worker was not killed");
    // Chunk 1 ran to its end (its result dropped), nothing else was
    // cancelled.
    let s = ex.stats();
    assert_eq!(s.cancelled - before.cancelled, 1, "{s:?}");
}

#[test]
fn dropping_a_map_withdraws_chunks_waiting_in_a_worker_and_lets_the_running_one_end() {
    let ex = pool(1);
    let pid = worker_pid(&ex);
    let before = ex.stats();
    // One worker: chunk 1 runs, chunk 2 waits in its ring behind it.
    // Chunks long enough for the drop to come while chunk 1 runs.
    let mut map = ex.map(sleep_ms, [1000u64; 10]).chunksize(1);
    assert_eq!(map.next().unwrap().unwrap(), 1000);
    wait_running_chunks(&ex);
    drop(map);
    // The worker runs what it holds, then this.
    assert_eq!(worker_pid(&ex), pid, "the worker was not killed");
    // (Chunk 1's outcome may still be on its way to being counted.)
    let start = std::time::Instant::now();
    while ex.stats().completed - before.completed < 3 && start.elapsed() < HANG {
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = ex.stats();
    assert_eq!(
        s.cancelled - before.cancelled,
        1,
        "the waiting chunk: {s:?}"
    );
    assert_eq!(
        s.completed - before.completed,
        2 + 1,
        "chunks 0 and 1, then the pid task: {s:?}"
    );
}

/// Waits until the pool's one worker holds two tasks.
fn wait_running_chunks(ex: &ProcessPoolExecutor) {
    let start = std::time::Instant::now();
    while ex.stats().running < 2 {
        assert!(
            start.elapsed() < HANG,
            "the chunks never reached the worker"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_map_timeout_stops_the_chunks_past_it_and_reads_no_more_input() {
    let ex = pool(2);
    let start = std::time::Instant::now();
    let naps = [10u64, 10, 60_000, 60_000, 60_000, 60_000, 60_000, 60_000];
    let outcomes: Vec<_> = ex
        .map(sleep_ms, naps)
        .chunksize(1)
        // Ample for the short naps, the workers' start-up included.
        .timeout(Duration::from_secs(3))
        .collect();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the map waited for its naps"
    );
    assert_eq!(outcomes[0].as_ref().unwrap(), &10);
    assert_eq!(outcomes[1].as_ref().unwrap(), &10);
    assert!(
        outcomes[2..]
            .iter()
            .all(|o| matches!(o, Err(Error::TimeLimit))),
        "{outcomes:?}"
    );
    // Some long naps were never read: as the array says how many are
    // left, each gets its error, and the outcomes zip with the input.
    assert_eq!(outcomes.len(), naps.len(), "{outcomes:?}");
    // A worker finished the short naps before the deadline, so it was
    // running a long one (sent by the first fill) when the deadline fell:
    // it was killed and replaced. (A nap that ran on would end within
    // HANG, so the task below alone would not tell.)
    support::wait_for_stats(
        "a worker killed at the deadline to be replaced",
        &ex,
        HANG,
        |s| s.respawned >= 1,
    );
    // The workers killed for it were replaced.
    assert_eq!(
        ex.submit(|x: u64| x + 1, 1)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        2
    );
    // An input that does not say how many items it has left: one error
    // stands for the unread ones.
    let unknown = naps.iter().copied().filter(|_| true);
    let outcomes: Vec<_> = ex
        .map(sleep_ms, unknown)
        .chunksize(1)
        .timeout(Duration::from_secs(3))
        .collect();
    assert!(outcomes[2..]
        .iter()
        .all(|o| matches!(o, Err(Error::TimeLimit))));
    assert!((3..naps.len()).contains(&outcomes.len()), "{outcomes:?}");
    // Unordered: every position once, the unread ones included.
    let mut seen: Vec<usize> = ex
        .map_unordered(sleep_ms, naps)
        .chunksize(1)
        .timeout(Duration::from_secs(3))
        .map(|(i, o)| {
            assert!(i < 2 || matches!(o, Err(Error::TimeLimit)), "{i}: {o:?}");
            i
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..naps.len()).collect::<Vec<_>>());
    // A huge input used as a time budget: one error for its unread items
    // (an error each would take hours, and `collect` would reserve room
    // for them all).
    let outcomes: Vec<_> = ex
        .map(sleep_ms, std::iter::repeat(20).take(1 << 40))
        .chunksize(1)
        .timeout(Duration::from_millis(300))
        .collect();
    assert!(matches!(outcomes.last(), Some(Err(Error::TimeLimit))));
    assert!(outcomes.len() < 10_000, "{} outcomes", outcomes.len());
}

#[test]
fn dropping_an_executor_with_pending_work_completes_it() {
    let ex = pool(2);
    let futs: Vec<_> = (0..20u64)
        .map(|i| ex.submit(|x: u64| (sleep_ms(5), x).1, i).unwrap())
        .collect();
    drop(ex);
    for (i, f) in futs.iter().enumerate() {
        assert_eq!(f.result_timeout(HANG).unwrap(), i as u64);
    }
}

#[test]
fn shutdown_rejects_new_work_and_can_cancel_or_kill() {
    let ex = pool(1);
    let running = ex.submit(sleep_ms, 2000).unwrap();
    let second = ex.submit(sleep_ms, 2000).unwrap();
    wait_running(&second);
    let queued = ex.submit(sleep_ms, 1).unwrap();
    ex.shutdown(true, true, true);
    assert!(matches!(
        ex.submit(|x: u8| x, 1),
        Err(Error::ShutdownExecutor)
    ));
    assert!(queued.cancelled());
    assert!(matches!(
        running.result_timeout(HANG),
        Err(Error::ShutdownExecutor)
    ));
    // Waiting in the killed worker's ring: it fails the same way, and does
    // not run again.
    let second = second.result_timeout(HANG);
    assert!(matches!(second, Err(Error::ShutdownExecutor)), "{second:?}");
    let later = ex.clone();
    assert!(matches!(
        later.map(|x: u8| x, 0..3).next(),
        Some(Err(Error::ShutdownExecutor))
    ));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    assert!(matches!(
        ProcessPoolExecutor::builder().max_workers(0).build(),
        Err(Error::InvalidConfig(_))
    ));
    match ProcessPoolExecutor::builder().ring_capacity(1000).build() {
        Err(e @ Error::InvalidConfig(_)) => {
            let text = e.to_string();
            assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
            assert!(text.contains("power of two"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ProcessPoolExecutor::builder()
            .max_tasks_per_child(0)
            .build(),
        Err(Error::InvalidConfig(_))
    ));
    // Zero would mean "no limit" (or a retirement per task): refused.
    for bad in [
        ProcessPoolExecutor::builder().hard_memory_limit(0),
        ProcessPoolExecutor::builder().memory_limit(0),
        ProcessPoolExecutor::builder().idle_timeout(Duration::ZERO),
        ProcessPoolExecutor::builder().spin(Duration::MAX),
    ] {
        assert!(matches!(bad.build(), Err(Error::InvalidConfig(_))));
    }
    // Variables no process can be given: refused at build, not after three
    // failed worker starts (a name with '=' was split silently).
    for (key, value, problem) in [
        ("A=B", "1", "'='"),
        ("", "x", "empty"),
        ("NUL\0K", "1", "NUL"),
        ("OK", "nul\0v", "value holding a NUL"),
    ] {
        match ProcessPoolExecutor::builder().env(key, value).build() {
            Err(e @ Error::InvalidConfig(_)) => {
                assert!(e.to_string().contains(problem), "{e}")
            }
            other => panic!("env({key:?}, {value:?}): {other:?}"),
        }
    }
    // Too large for execve (E2BIG): refused at build, naming the variable
    // but never showing its value.
    let long = "v".repeat(200_000);
    match ProcessPoolExecutor::builder()
        .env("LOKY_LONG", &long)
        .build()
    {
        Err(e @ Error::InvalidConfig(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("LOKY_LONG") && !text.contains("vvvv"),
                "{text}"
            );
        }
        other => panic!("a 200 kB variable: {other:?}"),
    }
    let mut many = ProcessPoolExecutor::builder();
    for i in 0..60 {
        many = many.env(format!("LOKY_PART_{i}"), "p".repeat(120_000));
    }
    match many.build() {
        Err(e @ Error::InvalidConfig(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("ulimit -s") && !text.contains("pppp"),
                "{text}"
            );
        }
        other => panic!("7 MB of variables: {other:?}"),
    }
}

#[test]
fn a_large_environment_variable_within_the_kernels_limit_reaches_the_workers() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .env("LOKY_LARGE", "L".repeat(100_000))
        .build()
        .unwrap();
    let len = ex.submit(
        |_: ()| std::env::var("LOKY_LARGE").map_or(0, |v| v.len()),
        (),
    );
    assert_eq!(len.unwrap().result_timeout(HANG).unwrap(), 100_000);
}

#[test]
fn messages_larger_than_the_ring_travel_both_ways() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .ring_capacity(4096)
        .build()
        .unwrap();
    let big: Vec<u64> = (0..100_000).collect();
    let sum = ex.submit(|v: Vec<u64>| v.iter().sum::<u64>(), big).unwrap();
    assert_eq!(sum.result_timeout(HANG).unwrap(), 100_000 * 99_999 / 2);
    let huge = ex
        .submit(|n: u64| vec![7u8; n as usize], 20 << 20)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(huge.len(), 20 << 20);
    assert!(huge.iter().all(|&b| b == 7));
    // The pool is intact after big messages.
    assert_eq!(ex.submit(|x: u64| x + 1, 1).unwrap().result().unwrap(), 2);
}

#[test]
fn env_and_initializer_reach_the_workers() {
    fn check(level: u32) {
        assert_eq!(level, 3);
        std::env::set_var("INIT_RAN", "yes");
    }
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .env("LOKY_TEST_VAR", "hello")
        .initializer(check, 3)
        .build()
        .unwrap();
    let got = ex
        .submit(
            |_: ()| {
                (
                    std::env::var("LOKY_TEST_VAR").unwrap_or_default(),
                    std::env::var("INIT_RAN").unwrap_or_default(),
                )
            },
            (),
        )
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(got, ("hello".to_string(), "yes".to_string()));
}

#[test]
fn stats_count_the_work() {
    let ex = pool(2);
    let futs: Vec<_> = (0..10u64)
        .map(|i| ex.submit(|x: u64| x, i).unwrap())
        .collect();
    for f in &futs {
        f.result_timeout(HANG).unwrap();
    }
    let _ = ex
        .submit(|_: ()| -> u8 { panic!("p") }, ())
        .unwrap()
        .exception();
    let s = ex.stats();
    assert_eq!(s.workers_alive, 2);
    assert_eq!(s.submitted, 11);
    assert_eq!(s.completed, 10);
    assert_eq!(s.failed, 1);
    assert_eq!((s.queued, s.running), (0, 0));
}

#[test]
fn chunks_that_fill_the_ring_are_requeued_not_lost() {
    // Each chunk is ~2 KiB and the ring 4 KiB: a worker's second chunk often
    // does not fit, and must wait in the parent instead of vanishing.
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .ring_capacity(4096)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let ex2 = ex.clone();
    std::thread::spawn(move || {
        let out: Vec<u64> = ex2
            .map(|x: u64| x + 1, 0..200_000u64)
            .chunksize(230)
            .collect::<Result<_, _>>()
            .unwrap();
        tx.send(out).unwrap();
    });
    let out = rx.recv_timeout(HANG).expect("map finished (no task lost)");
    assert_eq!(out.len(), 200_000);
    assert!(out.iter().enumerate().all(|(i, &v)| v == i as u64 + 1));
}

#[test]
fn a_map_on_a_shut_down_pool_ends_with_one_error_and_stops_reading() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static READ: AtomicUsize = AtomicUsize::new(0);
    let ex = loky::ProcessPoolExecutor::new(1).unwrap();
    ex.shutdown(true, false, false);
    let input = (0..1_000_000u64).inspect(|_| {
        READ.fetch_add(1, Ordering::Relaxed);
    });
    let out: Vec<_> = ex.map(|x: u64| x, input).chunksize(100).collect();
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], Err(loky::Error::ShutdownExecutor)));
    assert!(
        READ.load(Ordering::Relaxed) <= 100,
        "the map kept reading its input"
    );
    let unordered: Vec<_> = ex.map_unordered(|x: u64| x, 0..1000u64).collect();
    assert_eq!(unordered.len(), 1);
    assert_eq!(
        unordered[0].0, 0,
        "the error names the first item that was not run"
    );
}

#[test]
fn shutdown_with_wait_from_a_callback_on_a_pool_thread_returns_at_once() {
    let ex = pool(1);
    let release = Gate::closed("release-shutdown");
    // Held until the callback is in place: nobody waits on it, so the
    // manager thread publishes it and runs the callback.
    let trigger = ex.submit(wait_for_gate, release.path()).unwrap();
    let after = ex.submit(sleep_ms, 50).unwrap();
    let (tx, rx) = mpsc::channel();
    let ex2 = ex.clone();
    trigger.add_done_callback(move |_| {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        // Waiting here would wait for this very thread.
        ex2.shutdown(true, false, false);
        let _ = tx.send(thread);
    });
    release.open();
    let thread = rx
        .recv_timeout(HANG)
        .expect("shutdown(wait = true) in a callback on a pool thread did not return");
    assert!(
        thread.starts_with("loky-"),
        "ran on {thread:?}, not a pool thread"
    );
    // The pool closes behind the callback: new work is refused, what was
    // given runs, and a shutdown from an ordinary thread still waits.
    assert!(matches!(
        ex.submit(|x: u8| x, 1),
        Err(Error::ShutdownExecutor)
    ));
    assert_eq!(after.result_timeout(HANG).unwrap(), 50);
    let (tx, rx) = mpsc::channel();
    let ex2 = ex.clone();
    std::thread::spawn(move || {
        ex2.shutdown(true, false, false);
        let _ = tx.send(());
    });
    rx.recv_timeout(HANG)
        .expect("the shutdown from this thread returned");
    assert_eq!(ex.stats().workers_alive, 0);
}

#[test]
fn dropping_a_future_does_not_cancel_its_task() {
    let ex = pool(1);
    let release = Gate::closed("release-drop");
    let marker = Gate::closed("dropped");
    // The one worker holds two tasks (one running, one in its ring): the
    // next one waits in the parent's queue.
    let held = ex.submit(wait_for_gate, release.path()).unwrap();
    let second = ex.submit(sleep_ms, 1).unwrap();
    wait_running(&second);
    let f = ex
        .submit(
            |path: String| std::fs::write(path, b"ran").is_ok(),
            marker.path(),
        )
        .unwrap();
    assert!(!f.running(), "queued in the parent");
    drop(f);
    release.open();
    held.result_timeout(HANG).unwrap();
    // Submitted after it to the same single worker: runs after it.
    worker_pid(&ex);
    let ran = std::path::Path::new(&marker.path()).exists();
    assert!(ran, "the task of a dropped future did not run");
    let s = ex.stats();
    assert_eq!((s.cancelled, s.completed), (0, 4), "{s:?}");
}

#[test]
fn wait_first_exception_waits_for_every_future_when_none_fails() {
    let ex = pool(2);
    let futs = vec![
        ex.submit(sleep_ms, 1).unwrap(),
        ex.submit(sleep_ms, 300).unwrap(),
        ex.submit(sleep_ms, 50).unwrap(),
    ];
    let r = wait(&futs, Some(HANG), ReturnWhen::FirstException);
    assert_eq!(r.done, vec![0, 1, 2], "{r:?}");
    assert!(r.not_done.is_empty(), "{r:?}");
    for (f, ms) in futs.iter().zip([1, 300, 50]) {
        assert_eq!(f.result_timeout(HANG).unwrap(), ms);
    }
}

#[test]
fn wait_first_exception_returns_when_one_fails_while_others_still_run() {
    let ex = pool(2);
    let release = Gate::closed("release-wait");
    // Two tasks on a pool of two: each on its own worker. The first runs
    // until released, after the waits.
    let futs = vec![
        ex.submit(wait_for_gate, release.path()).unwrap(),
        ex.submit(|_: String| -> u64 { panic!("boom") }, String::new())
            .unwrap(),
    ];
    // Longer than the held task's own bound: a wait that missed the
    // failure ends only once that task does, with both done.
    let r = wait(&futs, Some(2 * HANG), ReturnWhen::FirstException);
    assert_eq!((r.done, r.not_done), (vec![1], vec![0]));
    // Failed already when the wait begins: it returns at once too.
    let r = wait(&futs, Some(2 * HANG), ReturnWhen::FirstException);
    assert_eq!((r.done, r.not_done), (vec![1], vec![0]));
    release.open();
    assert_eq!(futs[0].result_timeout(HANG).unwrap(), 1);
    assert!(matches!(
        futs[1].exception(),
        Some(Error::TaskPanicked { .. })
    ));
}

#[test]
fn wait_first_exception_does_not_count_a_cancelled_future_as_failed() {
    // As in `concurrent.futures`: a cancelled future raised nothing, so
    // FIRST_EXCEPTION goes on waiting for the others.
    let ex = pool(1);
    let release = Gate::closed("release-cancelled");
    // The one worker holds two tasks; the third waits in the parent, where
    // it can be cancelled.
    let held = ex.submit(wait_for_gate, release.path()).unwrap();
    let second = ex.submit(sleep_ms, 1).unwrap();
    wait_running(&second);
    let cancelled = ex.submit(sleep_ms, 1).unwrap();
    assert!(cancelled.cancel());
    let futs = vec![held, cancelled];
    let patience = Duration::from_millis(300);
    let start = std::time::Instant::now();
    let r = wait(&futs, Some(patience), ReturnWhen::FirstException);
    // Only the timeout ends this wait (nothing failed, one is still held):
    // returning earlier means the cancel counted as a failure.
    assert!(
        start.elapsed() >= patience,
        "returned after {:?}",
        start.elapsed()
    );
    assert_eq!((r.done, r.not_done), (vec![1], vec![0]));
    release.open();
    assert_eq!(futs[0].result_timeout(HANG).unwrap(), 1);
    assert_eq!(second.result_timeout(HANG).unwrap(), 1);
}

#[test]
fn task_ids_are_unique_across_pools() {
    // A scheduler may key its tables by id, with tasks of several pools
    // (or of a reusable executor that was replaced).
    let (a, b) = (pool(1), pool(1));
    let ids: Vec<u64> = (0..3)
        .flat_map(|_| {
            [
                a.submit(sleep_ms, 0).unwrap().id(),
                b.submit(sleep_ms, 0).unwrap().id(),
            ]
        })
        .collect();
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert!(!ids.contains(&0));
}

#[test]
fn cancelling_a_cancelled_future_again_returns_true() {
    // As `concurrent.futures.Future.cancel`: true while it is cancelled.
    let ex = pool(1);
    let held = ex.submit(sleep_ms, 300).unwrap();
    let second = ex.submit(sleep_ms, 1).unwrap();
    wait_running(&second);
    let queued = ex.submit(sleep_ms, 1).unwrap();
    assert!(queued.cancel());
    assert!(queued.cancel(), "already cancelled: still true");
    assert!(queued.cancelled());
    // A finished one cannot be cancelled, however often asked.
    assert_eq!(held.result_timeout(HANG).unwrap(), 300);
    assert!(!held.cancel());
    assert!(!held.cancel());
}

#[test]
fn a_kill_that_returns_true_ends_the_future_cancelled() {
    // Killing races the task's own end: whichever way it goes, the answer
    // and the outcome agree (true: Cancelled; false: the task's result).
    let ex = pool(2);
    for round in 0..100u64 {
        let f = ex.submit(sleep_ms, round % 3).unwrap();
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_micros(200 * (round % 7)));
        }
        let killed = f.kill();
        let got = f.result_timeout(HANG);
        if killed {
            assert!(
                matches!(got, Err(Error::Cancelled)),
                "round {round}: {got:?}"
            );
        } else {
            assert_eq!(got.unwrap(), round % 3, "round {round}");
        }
    }
}

/// A struct with a `usize` inside, which loky cannot check for rkyv's width.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
struct Span {
    start: usize,
    len: usize,
}

#[test]
fn sizes_past_32_bits_arrive_whole_or_are_refused() {
    let ex = pool(1);
    let big = 1usize << 33;
    let wide = std::mem::size_of::<rkyv::primitive::FixedUsize>() == 8;
    // An argument is refused at `submit`, a result when it arrives.
    let echoed = ex.submit(|x: usize| x, big).and_then(|f| f.result());
    let returned = ex
        .submit(|x: u64| x as usize, big as u64)
        .and_then(|f| f.result());
    let signed = ex
        .submit(|x: isize| x, -(1isize << 40))
        .and_then(|f| f.result());
    let many = ex
        .submit(|v: Vec<usize>| v, vec![5, big])
        .and_then(|f| f.result());
    let mapped: Vec<_> = ex.map(|x: usize| x + 1, [1, big]).collect();
    // The same through an explicit codec's batches, arguments and results.
    let rkyv = ex.with_codec::<loky::Rkyv>();
    let coded: Vec<_> = rkyv.map(|x: usize| x, [big]).collect();
    let coded_back: Vec<_> = rkyv.map(|x: u64| x as usize, [big as u64]).collect();
    if wide {
        // The default (loky's `pointer_width_64` feature): all of it whole,
        // inside other types too.
        assert_eq!(echoed.unwrap(), big);
        assert_eq!(returned.unwrap(), big);
        assert_eq!(signed.unwrap(), -(1isize << 40));
        assert_eq!(many.unwrap(), vec![5, big]);
        assert_eq!(
            mapped.into_iter().collect::<Result<Vec<_>, _>>().unwrap(),
            vec![2, big + 1]
        );
        for coded in [coded, coded_back] {
            assert_eq!(
                coded.into_iter().collect::<Result<Vec<_>, _>>().unwrap(),
                vec![big]
            );
        }
        let span = Span {
            start: big,
            len: big + 7,
        };
        assert_eq!(
            ex.submit(|s: Span| s, span.clone())
                .unwrap()
                .result()
                .unwrap(),
            span
        );
    } else {
        // rkyv's 32-bit format: what loky can see is refused, never cut.
        for r in [echoed, returned, many.map(|v| v[1])] {
            match r {
                Err(Error::Codec { message, .. }) => {
                    assert!(message.contains("pointer_width_64"), "{message}")
                }
                other => panic!("expected a codec error, got {other:?}"),
            }
        }
        assert!(matches!(signed, Err(Error::Codec { .. })), "{signed:?}");
        assert_eq!(mapped.len(), 2);
        assert!(matches!(mapped[1], Err(Error::Codec { .. })), "{mapped:?}");
        for coded in [coded, coded_back] {
            assert!(matches!(coded[..], [Err(Error::Codec { .. })]), "{coded:?}");
        }
    }
}

#[test]
fn elapsed_is_the_workers_time_on_the_task() {
    let ex = pool(1);
    // Queued behind a 200 ms task: its own time excludes that wait.
    let first = ex.submit(sleep_ms, 200).unwrap();
    let second = ex.submit(sleep_ms, 30).unwrap();
    assert_eq!(second.elapsed(), None, "not finished");
    assert_eq!(second.result_timeout(HANG).unwrap(), 30);
    let took = second.elapsed().expect("a finished task has a time");
    assert!(took >= Duration::from_millis(30), "{took:?}");
    assert!(
        took < Duration::from_millis(200),
        "{took:?} includes the wait"
    );
    assert!(first.elapsed().unwrap() >= Duration::from_millis(200));
    // A panic was timed too; a task whose worker died was not.
    let panicked = ex.submit(|_: ()| -> u8 { panic!("boom") }, ()).unwrap();
    assert!(panicked.exception_timeout(HANG).unwrap().is_some());
    assert!(panicked.elapsed().is_some());
    let died = ex
        .submit(|_: ()| -> u8 { std::process::abort() }, ())
        .unwrap();
    assert!(died.exception_timeout(HANG).unwrap().is_some());
    assert_eq!(died.elapsed(), None);
}

#[test]
fn a_result_timeout_holds_while_callbacks_hold_the_value() {
    let ex = pool(1);
    let f = Arc::new(ex.submit(sleep_ms, 1).unwrap());
    let (started, in_callback) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    f.add_done_callback(move |_| {
        let _ = started.send(());
        let _ = released.recv_timeout(HANG);
    });
    in_callback.recv_timeout(HANG).expect("the callback runs");
    // Finished, its value lent to the callback: a timeout still holds.
    assert!(f.done());
    let t = std::time::Instant::now();
    let r = f.result_timeout(Duration::from_millis(100));
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    release.send(()).unwrap();
    assert_eq!(
        f.result_timeout(HANG).unwrap(),
        1,
        "given back once it returned"
    );
}

#[test]
fn callbacks_waiting_on_each_others_values_time_out() {
    // Two futures cancelled on two threads at once: each one's callback
    // waits, with a timeout, for the other's value, lent to the other
    // callback. Both give up; neither waits for ever.
    // Without prefetching, both wait in the parent behind the busy task.
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .prefetch(false)
        .build()
        .unwrap();
    // Busy for longer than the five rounds (up to 200 ms each): a and b
    // must still be waiting when they are cancelled. (500 ms was not: once
    // it ended, a round's a ran, and b's callback got its value.)
    let busy = ex.submit(sleep_ms, 20_000).unwrap();
    for _ in 0..5 {
        let a = Arc::new(ex.submit(sleep_ms, 1).unwrap());
        let b = Arc::new(ex.submit(sleep_ms, 1).unwrap());
        let (tx, rx) = mpsc::channel();
        for (me, other) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let tx = tx.clone();
            me.add_done_callback(move |_| {
                let _ = tx.send(other.result_timeout(Duration::from_millis(200)));
            });
        }
        drop(tx);
        std::thread::scope(|s| {
            s.spawn(|| a.cancel());
            s.spawn(|| b.cancel());
        });
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(got.len(), 2, "{got:?}");
        for r in got {
            // The other's outcome (Cancelled) if its callback returned
            // first, else a timeout; or, where this thread ran the other's
            // callback nested inside its own, the refusal to wait on it.
            assert!(
                matches!(
                    r,
                    Err(Error::Cancelled | Error::Timeout | Error::InvalidArgument(_))
                ),
                "{r:?}"
            );
        }
    }
    assert!(!busy.done(), "the rounds outlasted the busy task");
    assert!(busy.kill());
}

/// A result the parent is slow to read (its decoding sleeps): while the
/// parent reads one, the workers have finished the next ones.
#[derive(Debug)]
struct SlowToRead(u64);

impl loky::Payload for SlowToRead {
    fn encode(&self, out: &mut loky::AlignedVec) -> Result<(), String> {
        self.0.encode(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        std::thread::sleep(Duration::from_millis(4));
        u64::decode(bytes).map(SlowToRead)
    }
    fn encode_batch(items: &Vec<Self>, out: &mut loky::AlignedVec) -> Result<(), String> {
        items.iter().map(|s| s.0).collect::<Vec<u64>>().encode(out)
    }
    fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, String> {
        Ok(<Vec<u64>>::decode(bytes)?
            .into_iter()
            .map(SlowToRead)
            .collect())
    }
}

#[test]
fn results_come_out_while_the_workers_keep_finishing_more() {
    let ex = pool(2);
    // Warm: both workers up.
    for f in (0..2u64)
        .map(|i| ex.submit(|x: u64| x, i).unwrap())
        .collect::<Vec<_>>()
    {
        f.result().unwrap();
    }
    let n = 120u64;
    let start = std::time::Instant::now();
    let futures: Vec<_> = (0..n).map(|i| ex.submit(SlowToRead, i).unwrap()).collect();
    assert_eq!(futures[0].result_timeout(HANG).unwrap().0, 0);
    let first = start.elapsed();
    for (i, f) in futures.iter().enumerate().skip(1) {
        assert_eq!(f.result_timeout(HANG).unwrap().0, i as u64);
    }
    let all = start.elapsed();
    // Reading the results takes about n x 4 ms; the first is out after a
    // few of them, not once the workers have run out of tasks.
    assert!(
        first * 4 < all,
        "the first result came out after {first:?}, all of them after {all:?}"
    );
}
