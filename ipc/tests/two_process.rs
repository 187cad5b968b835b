//! Two real processes talking through a [`Region`].
//!
//! The test binary re-executes itself (the rayon-core
//! `tests/stack_overflow_crash.rs` pattern) through [`Spawn`] on
//! `/proc/self/exe`, with the test's name, `--exact`, and an environment
//! variable naming the child's role; the region's memfd and one end of a
//! socket pair appear in the child at fixed descriptor numbers.
//!
//! No test asserts a duration: every wait has a generous bound that only
//! turns a hang into a failure, and the child gets `SIGKILL` when the test
//! thread that spawned it goes away.
#![cfg(all(target_os = "linux", not(loom)))]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use loky_ipc::pidfd::wait_readable;
use loky_ipc::spawn::Spawn;
use loky_ipc::{
    fdpass, spill, spin_until, Doorbell, ExitStatus, PidFd, Receiver, Region, RegionConfig, Sender,
};
use rustix::process::Signal;

/// Names the child's role; unset in the parent.
const ROLE: &str = "LOKY_IPC_TWO_PROCESS_ROLE";
/// Where the region's memfd appears in the child.
const REGION_FD: RawFd = 100;
/// Where the child's end of the socket pair appears.
const SOCKET_FD: RawFd = 101;
const TAG: u64 = 0x2b0c_7e57;
/// Ring capacity; messages go up to 4× this, so most large ones take the
/// segment path.
const CAP: usize = 4096;
/// Messages each way.
const MESSAGES: usize = 10_000;
/// How long a sleeper waits before it looks around: someone must have rung
/// by then if there is work (else a wake-up was lost).
const NAP: Duration = Duration::from_secs(5);
/// Time without progress after which the exchange counts as hung.
const STALL: Duration = Duration::from_secs(20);
/// Bound on waiting for a child to die or to get ready (a hang detector).
const HANG: Duration = Duration::from_secs(20);

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Tests that send large messages share this process's spill-buffer pool;
/// those that look at it run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs this test binary again as the child playing `role` in `test`.
fn spawn_self(test: &str, role: &str, region: &Region, socket: Option<BorrowedFd<'_>>) -> Child {
    let mut spawn = Spawn::new(Path::new("/proc/self/exe"), "two_process-child")
        .and_then(|s| s.arg(test))
        .and_then(|s| s.arg("--exact"))
        .and_then(|s| s.arg("--nocapture"))
        .and_then(|s| s.arg("--test-threads=1"))
        .and_then(|s| s.env([(ROLE, role), ("RUST_BACKTRACE", "1")]))
        .and_then(|s| s.fd(region.fd(), REGION_FD))
        .expect("spawn arguments")
        .death_signal(libc::SIGKILL);
    if let Some(socket) = socket {
        spawn = spawn.fd(socket, SOCKET_FD).expect("socket target");
    }
    Child(spawn.spawn().expect("spawn /proc/self/exe"))
}

/// A child that is killed and reaped if the test fails.
struct Child(PidFd);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill(Signal::KILL);
        let _ = self.0.wait_timeout(HANG);
    }
}

impl Child {
    /// Waits (bounded) for the child to end; panics if it does not.
    fn wait(&self) -> ExitStatus {
        let deadline = Instant::now() + HANG;
        loop {
            // `wait_readable` returns early on EINTR: poll until the bound.
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_readable(&[self.0.as_fd()], Some(left)).expect("poll")[0] {
                return self
                    .0
                    .try_wait()
                    .expect("waitid")
                    .expect("readable pidfd: exited");
            }
            assert!(
                Instant::now() < deadline,
                "child {} still running after {HANG:?}",
                self.0.pid()
            );
        }
    }
}

/// The region and socket the parent handed to this child.
fn child_endpoints() -> (Region, OwnedFd) {
    // SAFETY: the parent placed the region's memfd at REGION_FD and a socket
    // at SOCKET_FD (`Spawn::fd`); nothing else in this process owns them.
    let (region, socket) = unsafe {
        (
            OwnedFd::from_raw_fd(REGION_FD),
            OwnedFd::from_raw_fd(SOCKET_FD),
        )
    };
    (Region::attach(region, TAG).expect("attach region"), socket)
}

fn region() -> Region {
    Region::create(RegionConfig {
        slots: 1,
        ring_capacity: CAP,
        tag: TAG,
    })
    .expect("create region")
}

// ---------------------------------------------------------------------------
// 10,000 messages each way.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The deterministic contents of one direction: both processes can compute
/// message `i`, so the receiver checks length, bytes and order.
#[derive(Clone, Copy)]
struct Stream {
    seed: u64,
    max_inline: usize,
}

impl Stream {
    fn len(&self, i: usize) -> usize {
        let r = splitmix(self.seed ^ i as u64) >> 8;
        match i % 64 {
            0 => self.max_inline,
            1 => self.max_inline + 1,
            2 => 0,
            _ if r & 1 == 0 => (r >> 1) as usize % (self.max_inline + 1),
            _ => (r >> 1) as usize % (4 * CAP + 1),
        }
    }

    fn word(&self, i: usize, k: usize) -> [u8; 8] {
        (self.seed ^ ((i as u64) << 24) ^ k as u64).to_le_bytes()
    }

    fn fill(&self, i: usize, buf: &mut [u8]) {
        for (k, chunk) in buf.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word(i, k)[..chunk.len()]);
        }
    }

    fn matches(&self, i: usize, buf: &[u8]) -> bool {
        buf.chunks(8)
            .enumerate()
            .all(|(k, chunk)| chunk == &self.word(i, k)[..chunk.len()])
    }
}

#[derive(Debug, Default)]
struct Stats {
    spilled: usize,
    sleeps: usize,
    wakes_sent: usize,
}

/// One side of the exchange: sends its stream, receives the other's,
/// spinning a little then sleeping on its doorbell when it can do neither.
struct Peer<'r> {
    tx: Sender<'r>,
    rx: Receiver<'r>,
    /// Wakes this side (this side is its only consumer).
    bell: &'r Doorbell,
    /// Wakes the other side: rung after sending (a message waits) and after
    /// receiving (room was freed for the other's sender).
    peer_bell: &'r Doorbell,
    out: Stream,
    inc: Stream,
    sent: usize,
    received: usize,
    stats: Stats,
}

impl Peer<'_> {
    fn done(&self) -> bool {
        self.sent == MESSAGES && self.received == MESSAGES
    }

    fn ring_peer(&mut self) {
        if self.peer_bell.ring() {
            self.stats.wakes_sent += 1;
        }
    }

    /// Sends what fits, receives what waits; true if anything moved.
    fn step(&mut self) -> Result<bool, String> {
        let mut moved = false;
        while self.sent < MESSAGES {
            let (i, out) = (self.sent, self.out);
            let len = out.len(i);
            let sent = self.tx.send_with(i as u32, len, |buf| out.fill(i, buf));
            if !sent.map_err(|e| format!("send {i}: {e}"))? {
                break;
            }
            self.stats.spilled += usize::from(len > out.max_inline);
            self.sent += 1;
            moved = true;
            self.ring_peer();
        }
        let mut popped = false;
        while let Some(m) = self.rx.peek().map_err(|e| format!("peek: {e}"))? {
            let i = self.received;
            if i == MESSAGES {
                return Err(format!("message {} beyond the {MESSAGES} sent", m.tag));
            }
            if m.tag as usize != i {
                return Err(format!("expected message {i}, got tag {}", m.tag));
            }
            let want = self.inc.len(i);
            if m.bytes.len() != want || !self.inc.matches(i, m.bytes) {
                return Err(format!(
                    "message {i}: {} bytes, wrong contents or length (want {want})",
                    m.bytes.len()
                ));
            }
            self.rx.pop().map_err(|e| format!("pop: {e}"))?;
            self.received += 1;
            popped = true;
        }
        if popped {
            moved = true;
            self.ring_peer();
        }
        Ok(moved)
    }

    /// Runs to completion. `alive` reports a dead peer.
    fn run(
        &mut self,
        spin: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        let mut progress_at = Instant::now();
        while !self.done() {
            let mut stepped = Ok(false);
            spin_until(spin, || {
                stepped = self.step();
                !matches!(stepped, Ok(false))
            });
            if stepped? {
                progress_at = Instant::now();
                continue;
            }
            // Announce sleep, re-check, then wait: the peer rings after every
            // send and every receive, so no work can slip in unannounced.
            let token = self.bell.announce_sleep();
            match self.step() {
                Ok(false) => {}
                other => {
                    token.cancel();
                    other?;
                    progress_at = Instant::now();
                    continue;
                }
            }
            self.stats.sleeps += 1;
            let slept = Instant::now();
            token.wait(Some(NAP));
            if slept.elapsed() >= NAP {
                if self.step()? {
                    return Err(format!(
                        "lost wake-up: work was waiting after {NAP:?} asleep"
                    ));
                }
                alive()?;
                if progress_at.elapsed() >= STALL {
                    return Err(format!(
                        "no progress for {STALL:?}: sent {}, received {}",
                        self.sent, self.received
                    ));
                }
            }
        }
        Ok(())
    }
}

const PARENT_SEED: u64 = 0x5eed_0001;
const CHILD_SEED: u64 = 0x5eed_0002;

#[test]
fn exchange_10k_messages_both_ways() {
    if role().as_deref() == Some("exchange") {
        return child_exchange();
    }
    let _serial = serial();
    let region = region();
    let (mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "exchange_10k_messages_both_ways",
        "exchange",
        &region,
        Some(theirs.as_fd()),
    );
    drop(theirs);
    let slot = region.slot(0);
    // SAFETY: the parent is the only producer of `down` and the only
    // consumer of `up`; the child takes the other ends.
    let (p, c) = unsafe { (slot.down_producer(), slot.up_consumer()) };
    let max_inline = p.max_message();
    let mut peer = Peer {
        tx: Sender::new(p, mine.try_clone().expect("dup socket")),
        rx: Receiver::new(c, mine),
        bell: region.parent_bell(),
        peer_bell: slot.bell(),
        out: Stream {
            seed: PARENT_SEED,
            max_inline,
        },
        inc: Stream {
            seed: CHILD_SEED,
            max_inline,
        },
        sent: 0,
        received: 0,
        stats: Stats::default(),
    };
    let start = Instant::now();
    // The parent never spins (futex path), the child spins first.
    let outcome = peer.run(Duration::ZERO, || match child.0.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(st)) => Err(format!("child ended early: {st}")),
        Err(e) => Err(format!("waitid: {e}")),
    });
    let elapsed = start.elapsed();
    if let Err(e) = outcome {
        panic!("parent: {e} (the child's output, if any, is above)");
    }
    assert_eq!(
        child.wait(),
        ExitStatus::Exited(0),
        "the child failed (its output is above)"
    );
    eprintln!(
        "parent: {MESSAGES} each way in {elapsed:?}; {:?}",
        peer.stats
    );
}

fn child_exchange() {
    let (region, socket) = child_endpoints();
    let slot = region.slot(0);
    slot.set_pid(std::process::id());
    // SAFETY: this process is the slot's worker: the only producer of `up`
    // and the only consumer of `down`.
    let (p, c) = unsafe { (slot.up_producer(), slot.down_consumer()) };
    let max_inline = p.max_message();
    let mut peer = Peer {
        tx: Sender::new(p, socket.try_clone().expect("dup socket")),
        rx: Receiver::new(c, socket),
        bell: slot.bell(),
        peer_bell: region.parent_bell(),
        out: Stream {
            seed: CHILD_SEED,
            max_inline,
        },
        inc: Stream {
            seed: PARENT_SEED,
            max_inline,
        },
        sent: 0,
        received: 0,
        stats: Stats::default(),
    };
    // A dead parent kills this process (death signal), so `alive` has
    // nothing to check.
    if let Err(e) = peer.run(Duration::from_micros(50), || Ok(())) {
        panic!("child: {e}");
    }
    eprintln!("child: done; {:?}", peer.stats);
}

// ---------------------------------------------------------------------------
// Deaths.

/// A child killed while it sleeps on its doorbell is reported through its
/// pidfd, and the doorbell it left behind costs the parent nothing more than
/// one unneeded wake.
#[test]
fn sigkilled_child_is_seen_through_pidfd() {
    if role().as_deref() == Some("sleeper") {
        let (region, _socket) = child_endpoints();
        let slot = region.slot(0);
        slot.set_pid(std::process::id());
        let token = slot.bell().announce_sleep();
        token.wait(Some(HANG * 3));
        // Only reached if the parent never killed us.
        std::process::exit(3);
    }
    let region = region();
    let (_mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "sigkilled_child_is_seen_through_pidfd",
        "sleeper",
        &region,
        Some(theirs.as_fd()),
    );
    let slot = region.slot(0);
    // Wait until the child sleeps on its doorbell (`awake` drops to 0).
    let deadline = Instant::now() + HANG;
    while slot.pid() != child.0.pid() || slot.bell().awake() != 0 {
        assert_eq!(
            child.0.try_wait().expect("waitid"),
            None,
            "child ended before it slept"
        );
        assert!(Instant::now() < deadline, "child not asleep after {HANG:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = Instant::now();
    child.0.kill(Signal::KILL).expect("kill");
    let status = child.wait();
    let seen = killed.elapsed();
    assert_eq!(
        status,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    eprintln!("SIGKILL seen through the pidfd after {seen:?}");
    // The dead consumer is still counted asleep: a producer's ring issues a
    // wake to nobody, and returns at once.
    assert_eq!(slot.bell().awake(), 0);
    assert!(slot.bell().ring());
}

/// A producer killed in the middle of writing a message leaves every
/// message it committed intact and nothing of the one it had not.
#[test]
fn killed_producer_leaves_only_whole_messages() {
    const COMMITTED: u32 = 50;
    let payload = |i: u32| -> Vec<u8> { (0..40).map(|j| (i as u8).wrapping_mul(7) ^ j).collect() };
    if role().as_deref() == Some("crasher") {
        let (region, _socket) = child_endpoints();
        let slot = region.slot(0);
        // SAFETY: this process is the only producer of the slot's `up` ring.
        let mut p = unsafe { slot.up_producer() };
        for i in 0..COMMITTED {
            assert!(p.try_push(i, &payload(i)), "{COMMITTED} small messages fit");
        }
        let mut grant = p.reserve(40).expect("room for one more");
        grant.payload().fill(0xee);
        // Die with the grant half-done: never committed.
        rustix::process::kill_process(rustix::process::getpid(), Signal::KILL).expect("kill self");
        unreachable!("SIGKILL is not caught");
    }
    let region = region();
    let (_mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "killed_producer_leaves_only_whole_messages",
        "crasher",
        &region,
        Some(theirs.as_fd()),
    );
    assert_eq!(
        child.wait(),
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    let slot = region.slot(0);
    {
        // SAFETY: the producer is dead; the parent is the only consumer.
        let mut c = unsafe { slot.up_consumer() };
        for i in 0..COMMITTED {
            let m = c
                .peek()
                .expect("well-formed ring")
                .expect("committed message");
            assert_eq!((m.tag, m.payload), (i, &payload(i)[..]));
            c.pop().expect("pop");
        }
        assert!(
            c.peek().expect("well-formed ring").is_none(),
            "the uncommitted message leaked"
        );
    }
    // The slot can be handed to a replacement.
    // SAFETY: its worker is dead and the parent holds no end of it.
    unsafe { region.init_slot(0, 1) };
    assert!(slot.up_header().is_empty());
    assert_eq!(slot.generation(), 1);
}

// ---------------------------------------------------------------------------
// Large messages: spill buffers reused across processes, and a receiver that
// dies holding one.

const MIB: usize = 1 << 20;
/// Tag that ends an echo child.
const END: u32 = 0x7fff_0000;

/// Message `i` of the echo stream: most past the 2 KiB inline limit, of
/// alternating sizes.
fn echo_message(i: usize) -> Vec<u8> {
    let len = [5 * MIB, 100, 12 * MIB + 5, 3000, MIB][i % 5];
    let mut v = vec![0u8; len];
    for (k, chunk) in v.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix((i as u64) << 32 ^ k as u64).to_le_bytes()[..chunk.len()]);
    }
    v
}

/// Mappings of spill buffers in this process.
fn spill_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.contains("loky-spill"))
        .count()
}

/// Waits (bounded) for a message on `rx`, sleeping on `bell`; `alive`
/// reports a dead peer.
fn wait_message(rx: &mut Receiver<'_>, bell: &Doorbell, mut alive: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !rx.has_message() {
        let token = bell.announce_sleep();
        if rx.has_message() {
            token.cancel();
            break;
        }
        token.wait(Some(Duration::from_millis(20)));
        assert!(alive(), "peer died while we waited for a message");
        assert!(Instant::now() < deadline, "no message after {HANG:?}");
    }
}

/// Sends, waiting (bounded) for room.
fn send(tx: &mut Sender<'_>, tag: u32, bytes: &[u8]) {
    let deadline = Instant::now() + HANG;
    while !tx.try_send(tag, bytes).expect("send") {
        assert!(Instant::now() < deadline, "no room after {HANG:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The echo child: sends every message back until `END`.
fn child_echo() {
    let (region, socket) = child_endpoints();
    let slot = region.slot(0);
    slot.set_pid(std::process::id());
    // SAFETY: this process is the slot's worker: the only producer of `up`
    // and the only consumer of `down`.
    let (mut tx, mut rx) = unsafe {
        (
            Sender::new(slot.up_producer(), socket.try_clone().expect("dup socket")),
            Receiver::new(slot.down_consumer(), socket),
        )
    };
    loop {
        wait_message(&mut rx, slot.bell(), || true);
        let m = rx.peek().expect("peek").expect("a message");
        if m.tag == END {
            return;
        }
        send(&mut tx, m.tag, m.bytes);
        rx.pop().expect("pop");
        region.parent_bell().ring();
    }
}

/// The parent's ends of slot 0.
fn parent_ends(region: &Region, socket: OwnedFd) -> (Sender<'_>, Receiver<'_>) {
    let slot = region.slot(0);
    // SAFETY: the parent is the only producer of `down` and the only
    // consumer of `up`; the child takes the other ends.
    unsafe {
        (
            Sender::new(
                slot.down_producer(),
                socket.try_clone().expect("dup socket"),
            ),
            Receiver::new(slot.up_consumer(), socket),
        )
    }
}

/// Sends echo messages `range` and checks each comes back intact.
fn echo_round_trips(
    region: &Region,
    child: &Child,
    tx: &mut Sender<'_>,
    rx: &mut Receiver<'_>,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let msg = echo_message(i);
        send(tx, i as u32, &msg);
        region.slot(0).bell().ring();
        wait_message(rx, region.parent_bell(), || {
            matches!(child.0.try_wait(), Ok(None))
        });
        let m = rx.peek().expect("peek").expect("the echo");
        assert_eq!(m.tag, i as u32);
        assert!(
            m.bytes == &msg[..],
            "echo {i} differs ({} bytes)",
            msg.len()
        );
        rx.pop().expect("pop");
    }
}

/// 100 large messages each way, alternating sizes: the buffers are mapped
/// once on each side, not once per message.
#[test]
fn large_messages_reuse_buffers_across_processes() {
    if role().as_deref() == Some("echo") {
        return child_echo();
    }
    let _serial = serial();
    let region = region();
    let (mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "large_messages_reuse_buffers_across_processes",
        "echo",
        &region,
        Some(theirs.as_fd()),
    );
    drop(theirs);
    let (mut tx, mut rx) = parent_ends(&region, mine);
    echo_round_trips(&region, &child, &mut tx, &mut rx, 0..10);
    let warm = spill_mappings();
    echo_round_trips(&region, &child, &mut tx, &mut rx, 10..100);
    assert_eq!(spill_mappings(), warm, "a mapping per message");
    assert!(warm <= 2 * spill::MAX_POOLED);
    send(&mut tx, END, &[]);
    region.slot(0).bell().ring();
    assert_eq!(
        child.wait(),
        ExitStatus::Exited(0),
        "the child failed (its output is above)"
    );
}

/// A receiver killed while it holds a spill buffer: once the sender is
/// dropped, the pool forgets the buffer (it would never be marked free),
/// and a fresh channel carries large messages again.
#[test]
fn receiver_killed_holding_a_spill_buffer() {
    match role().as_deref() {
        Some("holder") => {
            let (region, socket) = child_endpoints();
            let slot = region.slot(0);
            // SAFETY: this process is the slot's worker (see `child_echo`).
            let (mut tx, mut rx) = unsafe {
                (
                    Sender::new(slot.up_producer(), socket.try_clone().expect("dup socket")),
                    Receiver::new(slot.down_consumer(), socket),
                )
            };
            wait_message(&mut rx, slot.bell(), || true);
            let m = rx.peek().expect("peek").expect("a message");
            assert_eq!(m.bytes, &echo_message(0)[..]);
            send(&mut tx, 1, b"got it");
            region.parent_bell().ring();
            // Hold the message until killed.
            std::thread::sleep(HANG * 3);
            std::process::exit(3);
        }
        Some("echo") => return child_echo(),
        _ => {}
    }
    let _serial = serial();
    let region = region();
    let (mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "receiver_killed_holding_a_spill_buffer",
        "holder",
        &region,
        Some(theirs.as_fd()),
    );
    drop(theirs);
    let (mut tx, mut rx) = parent_ends(&region, mine);
    send(&mut tx, 0, &echo_message(0));
    region.slot(0).bell().ring();
    wait_message(&mut rx, region.parent_bell(), || {
        matches!(child.0.try_wait(), Ok(None))
    });
    assert_eq!(rx.peek().expect("peek").expect("reply").bytes, b"got it");
    let held = spill::pool_stats();
    assert!(held.busy >= 1, "{held:?}");
    child.0.kill(Signal::KILL).expect("kill");
    assert!(matches!(
        child.wait(),
        ExitStatus::Signaled { signal: 9, .. }
    ));
    drop((tx, rx));
    let after = spill::pool_stats();
    assert_eq!(
        (after.busy, after.buffers),
        (held.busy - 1, held.buffers - 1)
    );
    // The slot goes to a replacement, with fresh rings and socket.
    // SAFETY: its worker is dead and the parent dropped its ends.
    unsafe { region.init_slot(0, 2) };
    let (mine, theirs) = fdpass::socket_pair().expect("socket pair");
    let child = spawn_self(
        "receiver_killed_holding_a_spill_buffer",
        "echo",
        &region,
        Some(theirs.as_fd()),
    );
    drop(theirs);
    let (mut tx, mut rx) = parent_ends(&region, mine);
    echo_round_trips(&region, &child, &mut tx, &mut rx, 0..6);
    send(&mut tx, END, &[]);
    region.slot(0).bell().ring();
    assert_eq!(
        child.wait(),
        ExitStatus::Exited(0),
        "the replacement failed (its output is above)"
    );
}
