//! A futex-backed event count for one side of a channel.
//!
//! Consumers are *awake* while they poll their rings and *asleep* while they
//! wait in `FUTEX_WAIT`. A producer that has just published a message calls
//! [`Doorbell::ring`], which costs one fence and one load while any consumer
//! is awake, and a `FUTEX_WAKE` only when every consumer announced it sleeps.
//!
//! The protocol is the classic event count (Dekker-style handshake):
//!
//! ```text
//! consumer                                producer
//! s = seq.load(Acquire)                   publish message (Release)
//! awake -= 1            (SeqCst)          fence(SeqCst)
//! fence(SeqCst)                           if awake == 0 {
//! if work visible { awake += 1; return }      seq += 1 (Release)
//! futex_wait(seq, s)                          futex_wake(seq)
//! awake += 1                              }
//! ```
//!
//! The two SeqCst fences guarantee that either the consumer sees the message
//! or the producer sees `awake == 0`; and since the producer bumps `seq`
//! before waking, a consumer whose `futex_wait` starts late finds `seq != s`
//! and returns at once. No wake-up is lost, and a crashed peer can at worst
//! cause one spurious wake-up: nothing is ever left held.
//!
//! The futex is *not* `FUTEX_PRIVATE`, so it works across processes that map
//! the same pages.
//!
//! Under `--cfg loom` the futex is replaced by a model of it (a loom mutex
//! standing for the kernel's hash-bucket lock, and a condvar for its wait
//! queue), so that loom can check the handshake above; loom cannot model
//! timeouts, so there a lost wake-up shows up as a deadlock.

use std::time::Duration;

#[cfg(not(loom))]
use rustix::thread::futex;

use crate::sync::{fence, AtomicU32};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

/// An event count in shared memory. `#[repr(C)]`, 8 bytes.
///
/// * `seq`: written by producers (`fetch_add`, Release) just before a wake;
///   read by consumers (Acquire) before they announce sleep, and by the kernel
///   in `FUTEX_WAIT`.
/// * `awake`: written by consumers only (the number of them that are polling);
///   read by producers after their SeqCst fence.
#[repr(C)]
#[derive(Debug)]
pub struct Doorbell {
    seq: AtomicU32,
    awake: AtomicU32,
    #[cfg(loom)]
    futex: ModelFutex,
}

impl Doorbell {
    /// A doorbell with `awake` consumers counted as polling.
    pub fn new(awake: u32) -> Self {
        Self {
            seq: AtomicU32::new(0),
            awake: AtomicU32::new(awake),
            #[cfg(loom)]
            futex: ModelFutex::default(),
        }
    }

    /// Reset in place (the slot of a dead worker is being reused).
    pub fn reset(&self, awake: u32) {
        self.awake.store(awake, Relaxed);
        self.seq.fetch_add(1, Relaxed);
    }

    /// Called by a producer after it published a message (with Release).
    /// Returns true if it had to wake a sleeper.
    #[inline]
    pub fn ring(&self) -> bool {
        // SYNC POINT: pairs with the fence in `announce_sleep`; together they
        // order "message published" against "consumer announced sleep".
        fence(SeqCst);
        if self.awake.load(Relaxed) != 0 {
            return false;
        }
        // SYNC POINT: Release so a consumer that observes the new `seq` in
        // `announce_sleep` (Acquire) also observes the published message.
        self.seq.fetch_add(1, Release);
        // One sleeper: any consumer takes every message there is (the
        // others would wake to find nothing), and a late one finds `seq`
        // moved and does not sleep.
        self.futex_wake(1);
        true
    }

    /// Wakes every sleeper whether or not a consumer is awake (used for
    /// control events such as shutdown, not on the data path).
    pub fn wake_all(&self) {
        // SYNC POINT: as in `ring`.
        self.seq.fetch_add(1, Release);
        self.futex_wake(i32::MAX as u32);
    }

    /// Number of consumers currently counted as awake.
    pub fn awake(&self) -> u32 {
        self.awake.load(Relaxed)
    }

    /// Counts one more consumer as awake (a thread starts polling).
    pub fn enter(&self) {
        self.awake.fetch_add(1, SeqCst);
    }

    /// Counts one consumer fewer as awake (a thread stops polling for good).
    /// Like [`SleepToken`], the caller must re-check for work afterwards.
    pub fn leave(&self) {
        self.awake.fetch_sub(1, SeqCst);
        // SYNC POINT: pairs with the fence in `ring`.
        fence(SeqCst);
    }

    /// First half of going to sleep: the caller is no longer counted as
    /// awake. It must re-check for work, then either [`SleepToken::cancel`]
    /// or [`SleepToken::wait`].
    #[must_use = "re-check for work, then cancel() or wait()"]
    pub fn announce_sleep(&self) -> SleepToken<'_> {
        // SYNC POINT: pairs with the Release `fetch_add` in `ring`.
        let seq = self.seq.load(Acquire);
        self.awake.fetch_sub(1, SeqCst);
        // SYNC POINT: pairs with the fence in `ring`.
        fence(SeqCst);
        SleepToken {
            bell: self,
            seq,
            done: false,
        }
    }
}

/// A consumer that announced sleep; see [`Doorbell::announce_sleep`].
#[derive(Debug)]
pub struct SleepToken<'a> {
    bell: &'a Doorbell,
    seq: u32,
    done: bool,
}

impl SleepToken<'_> {
    /// Work was found after all: count the consumer as awake again.
    pub fn cancel(mut self) {
        self.awake_again();
    }

    /// Counts the consumer as awake again (once: `Drop` then does nothing).
    fn awake_again(&mut self) {
        self.done = true;
        self.bell.awake.fetch_add(1, SeqCst);
    }

    /// Sleep until a producer rings, the timeout passes, or a signal arrives.
    /// The consumer counts as awake again when this returns.
    pub fn wait(mut self, timeout: Option<Duration>) {
        self.bell.futex_wait(self.seq, timeout);
        self.awake_again();
    }

    /// Like [`SleepToken::wait`], and also wakes when one of the `armed`
    /// lifelines breaks (see [`crate::lifeline`]). Falls back to a plain
    /// wait where `futex_waitv` is missing (Linux before 5.16).
    #[cfg(not(loom))]
    pub fn wait_watching(mut self, armed: &[crate::lifeline::Armed<'_>], timeout: Duration) {
        use std::sync::atomic::AtomicBool;
        static NO_WAITV: AtomicBool = AtomicBool::new(false);
        if armed.is_empty() || NO_WAITV.load(Relaxed) {
            return self.wait(Some(timeout));
        }
        let bell = crate::lifeline::shared_wait(&self.bell.seq, self.seq);
        match crate::lifeline::waitv(Some(bell), armed, timeout) {
            Ok(()) => self.awake_again(),
            // No `futex_waitv` (plain waits from now on), or anything else
            // (EFAULT, EINVAL cannot happen on valid words): a plain wait.
            Err(e) => {
                if e == rustix::io::Errno::NOSYS {
                    NO_WAITV.store(true, Relaxed);
                }
                self.wait(Some(timeout));
            }
        }
    }
}

#[cfg(not(loom))]
impl Doorbell {
    /// `FUTEX_WAKE` on `seq` for up to `count` sleepers, an `int` to the
    /// kernel: `i32::MAX` is every one (`u32::MAX` would read as -1).
    fn futex_wake(&self, count: u32) {
        // A failed wake (EFAULT cannot happen on a valid reference) is not
        // actionable: the sleeper's timeout will find the message.
        let _ = futex::wake(&self.seq, futex::Flags::empty(), count);
    }

    /// `FUTEX_WAIT` on `seq` while it still equals `expected`.
    fn futex_wait(&self, expected: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // EAGAIN (seq moved on), ETIMEDOUT and EINTR all mean "look again".
        let _ = futex::wait(&self.seq, futex::Flags::empty(), expected, ts.as_ref());
    }
}

/// Under `--cfg loom`: the kernel's futex, modelled. `bucket` stands for the
/// hash-bucket lock that `FUTEX_WAIT` holds while it compares the word and
/// queues the caller, and that `FUTEX_WAKE` holds while it dequeues.
#[cfg(loom)]
#[derive(Debug, Default)]
struct ModelFutex {
    bucket: loom::sync::Mutex<()>,
    queue: loom::sync::Condvar,
}

#[cfg(loom)]
impl Doorbell {
    fn futex_wake(&self, count: u32) {
        let _bucket = self.futex.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if count == 1 {
            self.futex.queue.notify_one();
        } else {
            self.futex.queue.notify_all();
        }
    }

    /// Never times out (loom has no time): a lost wake-up is a deadlock,
    /// which loom reports.
    fn futex_wait(&self, expected: u32, _timeout: Option<Duration>) {
        let bucket = self.futex.bucket.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: the bucket lock alone orders this load against a waker
        // (as in the kernel), and the weakest load explores the most.
        if self.seq.load(Relaxed) == expected {
            drop(
                self.futex
                    .queue
                    .wait(bucket)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
    }
}

impl Drop for SleepToken<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.awake_again();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn ring_without_sleepers_does_not_wake() {
        let bell = Doorbell::new(1);
        assert!(!bell.ring());
        let token = bell.announce_sleep();
        assert_eq!(bell.awake(), 0);
        token.cancel();
        assert_eq!(bell.awake(), 1);
    }

    #[test]
    fn sleeper_is_woken_by_ring() {
        let bell = Arc::new(Doorbell::new(1));
        let flag = Arc::new(AtomicBool::new(false));
        let (b2, f2) = (bell.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                if f2.load(Acquire) {
                    return start.elapsed();
                }
                let token = b2.announce_sleep();
                if f2.load(Acquire) {
                    token.cancel();
                    continue;
                }
                token.wait(Some(Duration::from_secs(30)));
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Release);
        bell.ring();
        let waited = t.join().expect("sleeper thread");
        // The bound is only a hang detector: a lost wake-up would sleep 30 s.
        assert!(
            waited < Duration::from_secs(20),
            "wake-up lost: slept {waited:?}"
        );
    }

    /// Every sleeper wakes, not only the first: the kernel reads the
    /// number of waiters to wake as a signed int, and `u32::MAX` is -1
    /// there, which woke one. (Two threads of one process on a pool's
    /// doorbell: a `wait` over futures of two pools, and that pool's own
    /// waiter; the one left asleep slept its whole nap.)
    #[test]
    fn wake_all_wakes_every_sleeper() {
        let bell = Arc::new(Doorbell::new(3));
        let flag = Arc::new(AtomicBool::new(false));
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let (b, f) = (bell.clone(), flag.clone());
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !f.load(Acquire) {
                        let token = b.announce_sleep();
                        if f.load(Acquire) {
                            token.cancel();
                            break;
                        }
                        token.wait(Some(Duration::from_secs(30)));
                    }
                    start.elapsed()
                })
            })
            .collect();
        // All three asleep (or about to be: a late one finds `seq` moved).
        while bell.awake() != 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Release);
        bell.wake_all();
        for t in sleepers {
            let waited = t.join().expect("sleeper thread");
            assert!(
                waited < Duration::from_secs(20),
                "a sleeper was left asleep: slept {waited:?}"
            );
        }
    }

    #[test]
    fn stale_token_returns_immediately() {
        let bell = Doorbell::new(1);
        let token = bell.announce_sleep();
        // A producer rings between the announcement and the wait.
        assert!(bell.ring());
        let start = Instant::now();
        token.wait(Some(Duration::from_secs(30)));
        assert!(start.elapsed() < Duration::from_secs(20));
        assert_eq!(bell.awake(), 1);
    }
}

/// Loom model of the doorbell (run with `RUSTFLAGS="--cfg loom" cargo test
/// -p loky-ipc --release --lib loom`).
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::ring::loom_model::with_ring;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// The Dekker core: the consumer announces sleep then re-checks for
    /// work; the producer publishes then rings. In every interleaving the
    /// consumer sees the message or the producer sees `awake == 0` (and so
    /// issues a wake).
    #[test]
    fn loom_doorbell_consumer_sees_message_or_producer_wakes() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::new(1));
            let work = Arc::new(AtomicBool::new(false));
            let (b, w) = (bell.clone(), work.clone());
            let consumer = thread::spawn(move || {
                let token = b.announce_sleep();
                let saw = w.load(Acquire);
                if saw {
                    token.cancel();
                } else {
                    // It would now wait: it stays counted as asleep (there
                    // is no futex here, this checks the handshake alone).
                    std::mem::forget(token);
                }
                saw
            });
            work.store(true, Release);
            let woke = bell.ring();
            let saw = consumer.join().expect("consumer");
            assert!(
                saw || woke,
                "neither the consumer saw the work nor the producer saw it asleep"
            );
        });
    }

    /// The whole protocol with the modelled futex: a consumer that sleeps
    /// whenever its ring is empty receives three messages that a producer
    /// pushes, ringing after each. A lost wake-up leaves the consumer
    /// blocked for good, which loom reports as a deadlock.
    ///
    /// Explored up to 4 preemptions by default (about 10 s in release; 5
    /// takes about 40 s): set `LOOM_MAX_PREEMPTIONS` to change it.
    #[test]
    fn loom_doorbell_no_lost_wakeup() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = model.preemption_bound.or(Some(4));
        model.check(|| {
            let bell = Arc::new(Doorbell::new(1));
            with_ring(256, |mut p, mut c| {
                let b = bell.clone();
                let producer = thread::spawn(move || {
                    for i in 0..3u32 {
                        assert!(p.try_push(i, &i.to_le_bytes()), "three small messages fit");
                        b.ring();
                    }
                });
                let mut next = 0u32;
                while next < 3 {
                    if let Some(m) = c.peek().expect("well-formed ring") {
                        assert_eq!((m.tag, m.payload), (next, &next.to_le_bytes()[..]));
                        c.pop().expect("well-formed ring");
                        next += 1;
                        continue;
                    }
                    let token = bell.announce_sleep();
                    if c.has_message() {
                        token.cancel();
                        continue;
                    }
                    token.wait(None);
                }
                producer.join().expect("producer");
            });
            assert_eq!(bell.awake(), 1);
        });
    }
}
