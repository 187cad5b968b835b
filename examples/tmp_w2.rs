//! temp
use std::time::{Duration, Instant};
fn main() {
    for spin in [0u64, 50, 200, 1000] {
        let ex = loky::ProcessPoolExecutor::builder().max_workers(2).spin(Duration::from_micros(spin)).build().unwrap();
        let ex2 = ex.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        std::thread::spawn(move || { let t = Instant::now(); while !d2.load(std::sync::atomic::Ordering::Relaxed) { std::thread::sleep(Duration::from_millis(500)); if t.elapsed() > Duration::from_secs(3) { eprintln!("{:?}\n{}", ex2.stats(), ex2.debug_state()); } } });
        let _ = ex.map(|x: u64| x * 2, 0..100_000u64).chunksize(16384).count();
        for chunk in [4096usize, 16384, 60000] {
            let n = 10_000_000u64;
            let t = Instant::now();
            let s = ex.map(|x: u64| x * 2, 0..n).chunksize(chunk).map(|r| r.unwrap()).fold(0u64, u64::wrapping_add);
            let el = t.elapsed();
            println!("spin {spin}us chunk {chunk}: {:.1} M/s ({s})", n as f64 / el.as_secs_f64() / 1e6);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
