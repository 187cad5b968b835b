//! A race over one message between its producer, who may withdraw it, and
//! its consumer, who starts it: exactly one of the two wins.
//!
//! A message sits in a ring until its consumer gets to it; meanwhile the
//! producer may no longer want it to run. The consumer calls
//! [`Claim::start`] with the message's key before acting on it, the
//! producer [`Claim::withdraw`] with the same key: whichever comes first
//! decides, and the other learns it from its return value.
//!
//! A producer about to end the consumer (kill it) while it runs a message
//! [`Claim::hold`]s the one behind it instead: the consumer must then stop
//! before that message, leaving it in the ring for the producer to hand to
//! another consumer, rather than start it and die with it.
//!
//! One word in shared memory holds the key of the last message started and
//! the key of the last message withdrawn. Each side moves its half with a
//! compare-and-swap of the whole word, and refuses when the other half
//! holds its own key: of a start and a withdrawal of the same key exactly
//! one takes effect, and the other sees it. The word's modification order
//! alone decides (nothing else is published through it, so every access is
//! Relaxed).
//!
//! The word remembers one key of each kind. That fits a consumer that the
//! producer keeps at most one message ahead of the one it is on, with at
//! most one withdrawal pending: the message behind the running one. A
//! withdrawal is kept through the start of the message in front, and
//! consumed when the consumer skips the withdrawn message; until then a
//! withdrawal of another key is refused (the producer must not hand over
//! another message it might withdraw before that skip). A withdrawal of a
//! message the consumer has got past finds another key started and
//! succeeds, though that message ran.
//!
//! Keys are the caller's (message ids), compared modulo 2^31 − 1: enough to
//! tell apart the few messages in flight. The top bit of the withdrawn half
//! marks a hold.

use std::sync::atomic::Ordering::Relaxed;

use crate::sync::AtomicU64;

/// The shared word (see the module docs): the last key withdrawn in the
/// high half, the last key started in the low half (0: none). `#[repr(C)]`,
/// 8 bytes; written by both sides with compare-and-swap.
#[repr(C)]
#[derive(Debug)]
pub struct Claim {
    word: AtomicU64,
}

impl Default for Claim {
    fn default() -> Self {
        Self::new()
    }
}

/// The low half of the word: the last key started.
const LOW: u64 = 0xFFFF_FFFF;

/// In the high half, over a key: that key is held ([`Claim::hold`]), not
/// withdrawn.
const HOLD: u64 = 1 << 31;

/// A key as the word holds it: 1 ..= 2^31 − 1 (0 is "none"; the top bit
/// is [`HOLD`]'s).
fn short(key: u64) -> u64 {
    key % (HOLD - 1) + 1
}

/// How [`Claim::hold`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Hold {
    /// Held (or held already): the consumer will not start it.
    Held,
    /// The consumer got past the running message (it started another, the
    /// held one presumably): the running one has ended.
    Ended,
    /// Not held: another withdrawal is pending, or the word cannot tell the
    /// two keys apart. The consumer may go on to the message.
    Refused,
}

/// What the consumer does with a message ([`Claim::start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Start {
    /// Act on it; it is now the last message started.
    Run,
    /// Skip it: the producer withdrew it. The consumer releases the
    /// message and tells the producer (the withdrawal is consumed).
    Skip,
    /// Stop before it, leaving it in the ring: the producer is ending this
    /// consumer and hands the message to another ([`Claim::hold`]). The
    /// word is left as it is.
    Hold,
}

/// [`short`], with 0 for "none".
fn short_or_none(key: u64) -> u64 {
    if key == 0 {
        0
    } else {
        short(key)
    }
}

impl Claim {
    /// No event yet.
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
        }
    }

    /// Forgets every start and withdrawal, while no consumer uses it.
    pub(crate) fn reset(&self) {
        self.word.store(0, Relaxed);
    }

    /// The consumer is about to act on message `key`: whether it may
    /// ([`Start::Run`]), must skip it (withdrawn: the withdrawal is then
    /// consumed) or must stop before it (held).
    pub fn start(&self, key: u64) -> Start {
        let k = short(key);
        let mut start = Start::Run;
        self.update(|word| {
            let pending = word >> 32;
            if pending == k | HOLD {
                start = Start::Hold;
                return None;
            }
            // Records the start, or consumes the withdrawal.
            Some(if pending == k {
                start = Start::Skip;
                word & LOW
            } else {
                start = Start::Run;
                word & !LOW | k
            })
        });
        start
    }

    /// The producer is about to end the consumer, which runs message
    /// `running`: holds `key`, the message behind it, so that the consumer
    /// stops before it ([`Start::Hold`]) if it gets there first. A hold is
    /// for good: the consumer never gets past it; a withdrawal of `key`
    /// still succeeds over it (and leaves it in place).
    pub fn hold(&self, key: u64, running: u64) -> Hold {
        let (k, r) = (short(key), short(running));
        if key != running && k == r {
            return Hold::Refused;
        }
        let mut outcome = Hold::Refused;
        self.update(|word| {
            let pending = word >> 32;
            outcome = if word & LOW != r {
                Hold::Ended
            } else if pending == 0 || pending == k | HOLD {
                Hold::Held
            } else {
                Hold::Refused
            };
            (outcome == Hold::Held).then_some(word & LOW | (k | HOLD) << 32)
        });
        outcome
    }

    /// The producer no longer wants message `key` to run: true if the
    /// consumer will skip it; false if it started it already, or another
    /// withdrawal is still pending (its message not skipped yet).
    pub fn withdraw(&self, key: u64) -> bool {
        let k = short(key);
        self.withdraw_if(key, |started| started != k)
    }

    /// [`Claim::withdraw`] of the message at the front, the next one the
    /// consumer starts unless it has started it already: succeeds only if
    /// the last message started is still `before` (the one the producer
    /// knows ran last; 0: none yet). A plain withdrawal would also succeed
    /// once the consumer has got past `key` to the message behind it.
    ///
    /// Refused when `key` and `before` are different keys that the word
    /// cannot tell apart (equal modulo 2^31 − 1): then "`key` started"
    /// would read as "still `before`".
    pub fn withdraw_next(&self, key: u64, before: u64) -> bool {
        let last = short_or_none(before);
        if key != before && short(key) == last {
            return false;
        }
        self.withdraw_if(key, |started| started == last)
    }

    /// Withdraws `key` if the key of the last message started passes
    /// `may`, and no other withdrawal is pending. Over a hold of `key` it
    /// succeeds and leaves the hold: the consumer stops there without
    /// starting it either way.
    fn withdraw_if(&self, key: u64, may: impl Fn(u64) -> bool) -> bool {
        let k = short(key);
        self.update(|word| {
            let pending = word >> 32;
            if !may(word & LOW) {
                return None;
            }
            match pending {
                0 => Some(word & LOW | k << 32),
                p if p == k || p == k | HOLD => Some(word),
                _ => None,
            }
        })
    }

    /// Whether `key` is the last message the consumer started (one load:
    /// for the producer once the consumer is gone, to tell which of its
    /// messages never started); `key` 0 asks whether none was.
    pub fn last_started_is(&self, key: u64) -> bool {
        self.word.load(Relaxed) & LOW == short_or_none(key)
    }

    /// Moves the word to `next(word)` unless that is `None`; whether it
    /// did. `next` may run several times (once per failed exchange).
    fn update(&self, mut next: impl FnMut(u64) -> Option<u64>) -> bool {
        let mut seen = self.word.load(Relaxed);
        loop {
            let Some(new) = next(seen) else {
                return false;
            };
            match self.word.compare_exchange_weak(seen, new, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_start_and_withdraw_wins() {
        let c = Claim::new();
        assert_eq!(c.start(1), Start::Run);
        assert!(!c.withdraw(1), "started: too late to withdraw");
        assert!(c.withdraw(2), "not started yet");
        assert_eq!(c.start(2), Start::Skip, "withdrawn: skipped");
        // The skip consumed the withdrawal: the next message is unaffected,
        // and can be withdrawn in turn.
        assert_eq!(c.start(3), Start::Run);
        assert!(c.withdraw(4));
        assert!(c.withdraw(4), "the same withdrawal again changes nothing");
        assert!(!c.withdraw(5), "one withdrawal pending at a time");
        assert_eq!(c.start(4), Start::Skip);
        assert!(c.withdraw(5));
        assert_eq!(c.start(5), Start::Skip);
    }

    #[test]
    fn a_withdrawal_outlives_the_start_of_the_message_in_front() {
        // The producer withdraws the waiting message before the consumer
        // even started the one in front of it.
        let c = Claim::new();
        assert_eq!(c.start(1), Start::Run);
        assert!(c.withdraw(3));
        assert_eq!(c.start(2), Start::Run);
        assert_eq!(
            c.start(3),
            Start::Skip,
            "withdrawn before 2 started: still withdrawn"
        );
        assert_eq!(c.start(4), Start::Run);
    }

    #[test]
    fn the_front_message_is_withdrawn_only_before_the_consumer_gets_past_it() {
        let c = Claim::new();
        assert!(c.last_started_is(0), "nothing started yet");
        // 1 is at the front of a fresh consumer: not started.
        assert!(c.withdraw_next(1, 0));
        assert_eq!(c.start(1), Start::Skip);
        assert_eq!(c.start(2), Start::Run);
        // 3 at the front, 2 known to have run: 3 ran, and the consumer went
        // on to 4; a plain withdrawal of 3 would wrongly succeed.
        assert_eq!(c.start(3), Start::Run);
        assert_eq!(c.start(4), Start::Run);
        assert!(!c.withdraw_next(3, 2), "got past 3");
        assert!(c.withdraw(3), "the plain withdrawal cannot tell");
        let c = Claim::new();
        assert_eq!(c.start(2), Start::Run);
        assert!(
            !c.withdraw_next(3, 1),
            "2 started, which the producer did not know of"
        );
        assert!(c.withdraw_next(3, 2));
        assert!(c.last_started_is(2) && !c.last_started_is(3));
    }

    #[test]
    fn keys_are_told_apart_across_the_31_bit_wrap() {
        let c = Claim::new();
        let k = (1u64 << 31) - 3;
        assert_eq!(c.start(k), Start::Run);
        assert!(c.withdraw(k + 1));
        assert_eq!(c.start(k + 1), Start::Skip);
        assert_eq!(c.start(k + 2), Start::Run);
        assert!(!c.withdraw(k + 2));
    }

    #[test]
    fn the_next_key_is_not_withdrawn_when_it_reads_as_the_one_before() {
        let c = Claim::new();
        let before = 5;
        let key = before + 0x7FFF_FFFF; // the same short key
        assert_eq!(c.start(before), Start::Run);
        // Had the consumer started `key`, the word would read the same.
        assert_eq!(c.start(key), Start::Run);
        assert!(!c.withdraw_next(key, before));
        // Told apart, the usual case works.
        assert_eq!(c.start(before + 1), Start::Run);
        assert!(c.withdraw_next(before + 2, before + 1));
    }

    #[test]
    fn a_hold_stops_the_consumer_before_the_message_behind_the_running_one() {
        let c = Claim::new();
        assert_eq!(c.start(1), Start::Run);
        assert_eq!(c.hold(2, 1), Hold::Held, "1 runs, 2 waits behind it");
        assert_eq!(
            c.hold(2, 1),
            Hold::Held,
            "the same hold again changes nothing"
        );
        // A withdrawal of the held message succeeds (it will not start)
        // and leaves the hold; another message's is refused.
        assert!(c.withdraw(2));
        assert!(c.withdraw_next(2, 1));
        assert!(!c.withdraw(3));
        // For good, and without moving the word: 1 is still the last
        // message started (what the producer reads once the consumer died).
        for _ in 0..3 {
            assert_eq!(c.start(2), Start::Hold);
        }
        assert!(c.last_started_is(1));
        // Too late once the consumer got past the running message.
        let c = Claim::new();
        assert_eq!(c.start(1), Start::Run);
        assert_eq!(c.start(2), Start::Run);
        assert_eq!(c.hold(2, 1), Hold::Ended, "2 started: 1 has ended");
        // Not over a pending withdrawal, nor for keys the word confuses.
        let c = Claim::new();
        assert_eq!(c.start(1), Start::Run);
        assert!(c.withdraw(3));
        assert_eq!(c.hold(2, 1), Hold::Refused);
        assert_eq!(c.hold(1 + 0x7FFF_FFFF, 1), Hold::Refused);
    }

    #[test]
    fn racing_threads_agree_on_one_winner() {
        let c = Claim::new();
        for key in 1..=5_000u64 {
            let (started, withdrawn) = std::thread::scope(|s| {
                let consumer = s.spawn(|| c.start(key) == Start::Run);
                let withdrawn = c.withdraw(key);
                (consumer.join().unwrap(), withdrawn)
            });
            assert!(
                started != withdrawn,
                "key {key}: start {started}, withdraw {withdrawn}"
            );
        }
    }
}

/// Under `--cfg loom`: every interleaving of a start and a withdrawal of the
/// same key has exactly one winner.
#[cfg(loom)]
mod loom_model {
    use super::*;

    #[test]
    fn one_winner() {
        use loom::sync::atomic::{
            AtomicBool,
            Ordering::{Acquire, Release},
        };
        use loom::sync::Arc;

        fn wait(flag: &AtomicBool) {
            while !flag.load(Acquire) {
                loom::thread::yield_now();
            }
        }

        loom::model(|| {
            let c = Arc::new(Claim::new());
            assert_eq!(c.start(1), Start::Run);
            // Messages 2 and 3 are in the consumer's ring; the producer
            // withdraws 3, then hands over 4 (as the pool does: after 2's
            // result, or after 3's skip when 3 was withdrawn) and withdraws
            // it too.
            let (done2, done3, handed) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let consumer = {
                let (c, done2, done3, handed) =
                    (c.clone(), done2.clone(), done3.clone(), handed.clone());
                loom::thread::spawn(move || {
                    let two = c.start(2) == Start::Run;
                    done2.store(true, Release);
                    let three = c.start(3) == Start::Run;
                    done3.store(true, Release);
                    wait(&handed);
                    (two, three, c.start(4) == Start::Run)
                })
            };
            let w3 = c.withdraw(3);
            wait(if w3 { &done3 } else { &done2 });
            handed.store(true, Release);
            let w4 = c.withdraw(4);
            let (two, three, four) = consumer.join().unwrap();
            assert!(two, "2 was never withdrawn");
            assert!(three != w3, "3: started {three}, withdrawn {w3}");
            assert!(four != w4, "4: started {four}, withdrawn {w4}");
        });
    }

    #[test]
    fn the_front_message_is_withdrawn_only_if_it_never_ran() {
        loom::model(|| {
            let c = loom::sync::Arc::new(Claim::new());
            assert_eq!(c.start(1), Start::Run);
            // 2 is at the front (1 is known to have run), 3 behind it; the
            // consumer may get through both before the producer acts.
            let consumer = {
                let c = c.clone();
                loom::thread::spawn(move || (c.start(2) == Start::Run, c.start(3) == Start::Run))
            };
            let w2 = c.withdraw_next(2, 1);
            let (two, three) = consumer.join().unwrap();
            assert!(two != w2, "2: started {two}, withdrawn {w2}");
            assert!(three, "3 was never withdrawn");
        });
    }

    #[test]
    fn a_held_message_never_starts_and_an_unheld_one_ends_the_running_one() {
        loom::model(|| {
            let c = loom::sync::Arc::new(Claim::new());
            // 1 runs, 2 waits behind it; the producer holds 2 to end the
            // consumer while it runs 1, as the consumer may finish 1 and go
            // on to 2 meanwhile.
            assert_eq!(c.start(1), Start::Run);
            let consumer = {
                let c = c.clone();
                loom::thread::spawn(move || c.start(2))
            };
            let held = c.hold(2, 1);
            let two = consumer.join().unwrap();
            match held {
                Hold::Held => {
                    assert_eq!(two, Start::Hold);
                    assert!(c.last_started_is(1), "the producer sees 2 never started");
                }
                Hold::Ended => assert_eq!(two, Start::Run),
                Hold::Refused => panic!("nothing else was pending"),
            }
        });
    }

    #[test]
    fn a_skipped_message_does_not_count_as_started() {
        loom::model(|| {
            let c = loom::sync::Arc::new(Claim::new());
            assert_eq!(c.start(1), Start::Run);
            // 2 is withdrawn (the consumer will skip it); 3 is then stopped
            // at the front, knowing 1 as the last to have run.
            assert!(c.withdraw(2));
            let consumer = {
                let c = c.clone();
                loom::thread::spawn(move || (c.start(2) == Start::Run, c.start(3) == Start::Run))
            };
            let w3 = c.withdraw_next(3, 1);
            let (two, three) = consumer.join().unwrap();
            assert!(!two, "2 was withdrawn");
            assert!(three != w3, "3: started {three}, withdrawn {w3}");
        });
    }
}
