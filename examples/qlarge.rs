//! scratch
use std::time::Instant;
fn sum(v: Vec<f64>) -> f64 {
    std::thread::sleep(std::time::Duration::from_millis(30));
    v.iter().sum()
}
fn main() -> Result<(), loky::Error> {
    let ex = loky::ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()?;
    let data: Vec<f64> = (0..(32usize << 20) / 8).map(|i| (i % 100) as f64).collect();
    let want: f64 = data.iter().sum();
    let n = 12;
    let mut sub = vec![];
    let mut tot = vec![];
    for rep in 0..8 {
        let args: Vec<Vec<f64>> = (0..n).map(|_| data.clone()).collect();
        let t = Instant::now();
        let futs: Vec<_> = args
            .into_iter()
            .map(|a| ex.submit(sum, a))
            .collect::<Result<_, _>>()?;
        let s = t.elapsed().as_secs_f64();
        for f in futs {
            assert_eq!(f.result()?, want);
        }
        if rep > 0 {
            sub.push(s * 1e3);
            tot.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    sub.sort_by(f64::total_cmp);
    tot.sort_by(f64::total_cmp);
    eprintln!(
        "12 x 32 MiB to 2 workers: submit loop median {:.1} ms, total median {:.1} ms ({:.2} GB/s)",
        sub[3],
        tot[3],
        (n * 32) as f64 / 1024.0 * 1.0737 / (tot[3] / 1e3)
    );
    Ok(())
}
