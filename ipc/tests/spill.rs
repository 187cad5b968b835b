//! Spill buffers in one process: reuse across many messages of alternating
//! sizes, growth, more messages in flight than pooled buffers, trimming,
//! zero-copy sends of messages written in a buffer, and a sender that goes away while its
//! receiver holds a buffer. (`two_process.rs` runs the same protocol across
//! real processes, with a receiver killed mid-message.)
//!
//! The pool is per process, so tests that look at it take `SERIAL`.
#![cfg(all(target_os = "linux", not(loom)))]

use std::sync::{Mutex, MutexGuard};

use loky_ipc::ring::HeapRing;
use loky_ipc::spill::{self, Buffer, SpilledMessage};
use loky_ipc::{fdpass, Receiver, Sender};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MIB: usize = 1 << 20;

/// Spill buffers mapped in this process (sender and receiver sides). A
/// receiver's mapping may show as two lines (its header page writable for
/// a moment, the rest read-only); each mapping starts at file offset 0, so
/// only those lines are counted.
fn spill_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("loky-spill")
                && l.split_whitespace()
                    .nth(2)
                    .is_some_and(|o| o.trim_start_matches('0').is_empty())
        })
        .count()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (k, chunk) in v.chunks_mut(8).enumerate() {
        let w = ((i as u64) << 40 ^ k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// Receives one message and checks it is message `i` of `len` bytes.
fn expect(rx: &mut Receiver<'_>, i: usize, len: usize) {
    let m = rx.peek().unwrap().expect("a message is waiting");
    assert_eq!(m.tag, i as u32);
    assert_eq!(m.bytes.len(), len, "message {i}");
    assert_eq!(m.bytes.as_ptr() as usize % 16, 0);
    assert!(m.bytes == pattern(i, len), "message {i}: contents differ");
    rx.pop().unwrap();
}

#[test]
fn alternating_sizes_reuse_the_same_buffers() {
    let _serial = serial();
    let mut ring = HeapRing::new(64 << 10).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    // Four sizes past the ring's 32 KiB inline limit, one below.
    let sizes = [3 * MIB, 100, 20 * MIB + 7, 40 << 10, MIB + 3];
    let before = spill::pool_stats().buffers;
    let mut warm = None;
    for i in 0..200 {
        let len = sizes[i % sizes.len()];
        assert!(tx.try_send(i as u32, &pattern(i, len)).unwrap());
        expect(&mut rx, i, len);
        if i == 2 * sizes.len() {
            warm = Some((spill_mappings(), fds()));
        }
    }
    // One message in flight at a time: the 20 MiB buffer and one more
    // serve every size (smallest free buffer that fits).
    assert!(spill::pool_stats().buffers <= before + 2);
    assert_eq!(
        Some((spill_mappings(), fds())),
        warm,
        "no mapping or descriptor per message once warm"
    );
    assert_eq!(spill::pool_stats().busy, 0);
}

#[test]
fn growing_then_shrinking_messages_arrive_intact() {
    let _serial = serial();
    let mut ring = HeapRing::new(4096).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    let mut sizes: Vec<usize> = (0..=6).map(|k| (MIB << k) + k).collect();
    sizes.extend((0..6).rev().map(|k| (MIB << k) - k));
    for (i, &len) in sizes.iter().enumerate() {
        let msg = pattern(i, len);
        assert!(tx
            .send_with(i as u32, len, |buf| buf.copy_from_slice(&msg))
            .unwrap());
        expect(&mut rx, i, len);
    }
    let stats = spill::pool_stats();
    assert!(stats.buffers <= spill::MAX_POOLED);
    assert_eq!(stats.busy, 0);
}

#[test]
fn more_messages_in_flight_than_pooled_buffers() {
    let _serial = serial();
    let mut ring = HeapRing::new(64 << 10).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    let n = 3 * spill::MAX_POOLED;
    for i in 0..n {
        assert!(tx.try_send(i as u32, &pattern(i, 2 * MIB + i)).unwrap());
    }
    assert!(spill::pool_stats().buffers <= spill::MAX_POOLED);
    for i in 0..n {
        expect(&mut rx, i, 2 * MIB + i);
    }
    assert_eq!(spill::pool_stats().busy, 0);
    // The one-off buffers are unmapped once seen free: a few more messages
    // leave at most the pooled buffers and the receiver's cache mapped.
    for i in n..n + 4 {
        assert!(tx.try_send(i as u32, &pattern(i, 2 * MIB)).unwrap());
        expect(&mut rx, i, 2 * MIB);
    }
    assert!(spill_mappings() <= 2 * spill::MAX_POOLED);
}

#[test]
fn trimmed_buffers_give_pages_back_and_still_work() {
    let _serial = serial();
    let mut ring = HeapRing::new(4096).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    assert!(tx.try_send(1, &pattern(1, 8 * MIB)).unwrap());
    expect(&mut rx, 1, 8 * MIB);
    assert!(spill::trim(std::time::Duration::ZERO) >= 8 * MIB);
    assert_eq!(spill::pool_stats().reserved_bytes, 0);
    // Reserved again at the next lease; the receiver's mapping still works.
    assert!(tx.try_send(2, &pattern(2, 8 * MIB)).unwrap());
    expect(&mut rx, 2, 8 * MIB);
    assert!(spill::pool_stats().reserved_bytes >= 8 * MIB);
    // A buffer in use is not trimmed.
    assert!(tx.try_send(3, &pattern(3, 8 * MIB)).unwrap());
    let _ = rx.peek().unwrap().unwrap();
    spill::trim(std::time::Duration::ZERO);
    assert!(spill::pool_stats().reserved_bytes >= 8 * MIB);
    rx.pop().unwrap();
}

#[test]
fn a_spilled_message_is_sent_as_its_buffer() {
    let _serial = serial();
    let mut ring = HeapRing::new(4096).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    let len = 5 * MIB + 1;
    let mut buf = Buffer::lease(len).unwrap();
    buf.as_mut_slice()[..len].copy_from_slice(&pattern(7, len));
    let message = SpilledMessage::new(buf, len).unwrap();
    assert_eq!(message.bytes(), &pattern(7, len)[..]);
    let leased = spill::pool_stats().leased;
    assert!(tx.try_send_spilled(7, &message).unwrap());
    drop(message);
    // Sent as itself: no second buffer was leased for a copy, and ours is
    // no longer leased once dropped (it is busy until the receiver is done).
    assert_eq!(spill::pool_stats().leased, leased - 1);
    let held = spill::pool_stats().busy;
    expect(&mut rx, 7, len);
    assert_eq!(spill::pool_stats().busy, held - 1);
    // A spilled message that fits the ring is copied inline.
    let mut small = Buffer::lease(100).unwrap();
    small.as_mut_slice()[..100].copy_from_slice(&pattern(9, 100));
    let message = SpilledMessage::new(small, 100).unwrap();
    assert!(tx.try_send_spilled(9, &message).unwrap());
    expect(&mut rx, 9, 100);
    // A length past the buffer is refused.
    let buf = Buffer::lease(100).unwrap();
    let capacity = buf.capacity();
    assert!(SpilledMessage::new(buf, capacity + 1).is_err());
}

#[test]
fn a_spilled_message_comes_back_when_the_ring_is_full() {
    let _serial = serial();
    let mut ring = HeapRing::new(4096).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    // Fill the ring to the last byte with small messages.
    let mut sent = 0;
    for size in [200, 24, 1] {
        while tx.try_send(1, &vec![0u8; size]).unwrap() {
            sent += 1;
        }
    }
    let len = 2 * MIB;
    let mut buf = Buffer::lease(len).unwrap();
    buf.as_mut_slice()[..len].copy_from_slice(&pattern(2, len));
    let message = SpilledMessage::new(buf, len).unwrap();
    assert!(
        !tx.try_send_spilled(2, &message).unwrap(),
        "the ring is full"
    );
    assert_eq!(message.bytes(), &pattern(2, len)[..]);
    for _ in 0..sent {
        rx.pop().unwrap();
    }
    assert!(tx.try_send_spilled(2, &message).unwrap());
    expect(&mut rx, 2, len);
}

#[test]
fn a_dropped_sender_abandons_the_buffer_its_receiver_holds() {
    let _serial = serial();
    let mut ring = HeapRing::new(4096).unwrap();
    let (p, c) = ring.split();
    let (a, b) = fdpass::socket_pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
    assert!(tx.try_send(1, &pattern(1, 4 * MIB)).unwrap());
    let _ = rx.peek().unwrap().unwrap(); // read, never released
    let held = spill::pool_stats();
    assert!(held.busy >= 1);
    drop(tx); // as the parent does once the receiving worker is dead
    let after = spill::pool_stats();
    assert_eq!(after.busy, held.busy - 1);
    assert_eq!(after.buffers, held.buffers - 1);
    drop(rx);
}
