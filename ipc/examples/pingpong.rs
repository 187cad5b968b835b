//! Round-trip latency of a 16-byte message between two processes, through
//! the two rings of one region slot, with each side waiting for the reply
//! either by spinning first (then sleeping on its doorbell) or by sleeping
//! on the doorbell at once (futex only).
//!
//! ```text
//! cargo run --release -p loky-ipc --example pingpong [ROUNDS] [SPIN_US]
//! ```
//!
//! The parent re-executes itself (`/proc/self/exe child SPIN_US`) once per
//! mode, with the region's memfd at descriptor 3, and prints percentiles of
//! the measured round trips next to the cost of one `Instant::now()`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use loky_ipc::spawn::Spawn;
use loky_ipc::{spin_until, Consumer, Doorbell, ExitStatus, Region, RegionConfig};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const REGION_FD: i32 = 3;
const TAG: u64 = 0x9196_9096;
/// Tag of the message that tells the child to exit.
const QUIT: u32 = 0x7fff_ffff;
/// How long a sleeper waits before it looks again (never reached when the
/// doorbells work; a bound, not a tuning knob).
const NAP: Duration = Duration::from_secs(1);
const WARMUP: usize = 2_000;

/// Waits for a message on `c`: spins for `spin`, then sleeps on `bell`.
/// Returns whether it had to sleep.
fn wait_for(c: &mut Consumer<'_>, bell: &Doorbell, spin: Duration) -> bool {
    let mut slept = false;
    loop {
        if spin_until(spin, || c.has_message()) {
            return slept;
        }
        let token = bell.announce_sleep();
        if c.has_message() {
            token.cancel();
            return slept;
        }
        token.wait(Some(NAP));
        slept = true;
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("child") {
        let spin_us: u64 = args.next().ok_or("child: missing SPIN_US")?.parse()?;
        return child(Duration::from_micros(spin_us));
    }
    let rounds: usize = first.as_deref().unwrap_or("20000").parse()?;
    let spin_us: u64 = args.next().as_deref().unwrap_or("50").parse()?;
    let clock = {
        let t = Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(Instant::now());
        }
        t.elapsed() / 1000
    };
    println!(
        "{rounds} round trips of a 16-byte message, two processes; Instant::now() costs {clock:?}"
    );
    for (mode, spin) in [
        (
            format!("spin {spin_us} µs, then futex"),
            Duration::from_micros(spin_us),
        ),
        ("futex only".to_owned(), Duration::ZERO),
    ] {
        let (mut rtts, sleeps) = run(rounds, spin)?;
        rtts.sort_unstable();
        let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
        println!(
            "{mode:>26}: p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}  (parent slept in {sleeps} of {rounds})",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(1.0),
        );
    }
    Ok(())
}

/// Runs `rounds` measured round trips against a fresh child.
fn run(rounds: usize, spin: Duration) -> Result<(Vec<Duration>, usize)> {
    let region = Region::create(RegionConfig {
        slots: 1,
        ring_capacity: 4096,
        tag: TAG,
    })?;
    let child = Spawn::new(Path::new("/proc/self/exe"), "pingpong-child")?
        .arg("child")?
        .arg(&spin.as_micros().to_string())?
        .fd(region.fd(), REGION_FD)?
        .death_signal(libc::SIGKILL)
        .spawn()?;
    let slot = region.slot(0);
    // SAFETY: the parent is the only producer of `down` and the only
    // consumer of `up`.
    let (mut p, mut c) = unsafe { (slot.down_producer(), slot.up_consumer()) };
    let mut rtts = Vec::with_capacity(rounds);
    let mut sleeps = 0;
    let mut msg = [0u8; 16];
    for i in 0..WARMUP + rounds {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let start = Instant::now();
        if !p.try_push(i as u32, &msg) {
            return Err("ping ring full: the child is not answering".into());
        }
        slot.bell().ring();
        let slept = wait_for(&mut c, region.parent_bell(), spin);
        let reply = c.peek()?.ok_or("woken without a reply")?;
        if reply.tag != i as u32 || reply.payload != msg {
            return Err(format!("round {i}: wrong reply (tag {})", reply.tag).into());
        }
        c.pop()?;
        if i >= WARMUP {
            rtts.push(start.elapsed());
            sleeps += usize::from(slept);
        }
        if child.try_wait()?.is_some() {
            return Err("the child died".into());
        }
    }
    if !p.try_push(QUIT, &[]) {
        return Err("ring full at exit".into());
    }
    slot.bell().ring();
    match child.wait_timeout(Duration::from_secs(20))? {
        Some(ExitStatus::Exited(0)) => Ok((rtts, sleeps)),
        other => Err(format!("child ended with {other:?}").into()),
    }
}

fn child(spin: Duration) -> Result<()> {
    // SAFETY: the parent placed the region's memfd at REGION_FD; nothing else
    // in this process owns that descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(REGION_FD) };
    let region = Region::attach(fd, TAG)?;
    let slot = region.slot(0);
    // SAFETY: this process is the slot's worker: the only consumer of `down`
    // and the only producer of `up`.
    let (mut p, mut c) = unsafe { (slot.up_producer(), slot.down_consumer()) };
    let mut buf = [0u8; 16];
    let (mut rounds, mut sleeps) = (0usize, 0usize);
    loop {
        sleeps += usize::from(wait_for(&mut c, slot.bell(), spin));
        let m = c.peek()?.ok_or("woken without a message")?;
        if m.tag == QUIT {
            eprintln!(
                "{:>26}  (child slept in {sleeps} of {rounds}, warm-up included)",
                ""
            );
            return Ok(());
        }
        rounds += 1;
        let tag = m.tag;
        let len = m.payload.len().min(16);
        buf[..len].copy_from_slice(&m.payload[..len]);
        c.pop()?;
        if !p.try_push(tag, &buf[..len]) {
            return Err("pong ring full".into());
        }
        region.parent_bell().ring();
    }
}
