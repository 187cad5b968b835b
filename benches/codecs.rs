//! What each way of sending data costs: encode + decode of a small struct
//! (ns) and of a large `Vec<f64>` (GB/s), for the rkyv default, `Serde<T>`,
//! the `MsgPack` codec and a custom codec (serde_json, as a user might plug
//! in). Also the submit + result round trip of the small struct through a
//! warm pool of 1 worker.
//!
//! `cargo bench --bench codecs` prints a markdown table (the one in the
//! "Sending data to workers" guide) before criterion's own report.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loky::{AlignedVec, Codec, MsgPack, Payload, ProcessPoolExecutor, Rkyv, Serde};

#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
struct Small {
    id: u64,
    name: String,
    values: Vec<f64>,
    flag: bool,
}

fn small() -> Small {
    Small {
        id: 42,
        name: "sensor-17".into(),
        values: vec![1.5, -2.25, 3.0, 4.125],
        flag: true,
    }
}

/// A custom codec: JSON through serde_json.
struct Json;

impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> Codec<T> for Json {
    fn encode(value: &T, out: &mut AlignedVec) -> Result<(), String> {
        serde_json::to_writer(out, value).map_err(|e| e.to_string())
    }
    fn decode(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// One way of turning a `T` into bytes and back.
trait Way<T> {
    const NAME: &'static str;
    fn encode(v: &T, out: &mut AlignedVec);
    fn decode(bytes: &[u8]) -> T;
}

struct ViaPayload;
impl<T: Payload> Way<T> for ViaPayload {
    const NAME: &'static str = "rkyv (default)";
    fn encode(v: &T, out: &mut AlignedVec) {
        v.encode(out).unwrap()
    }
    fn decode(bytes: &[u8]) -> T {
        T::decode(bytes).unwrap()
    }
}

struct ViaSerde;
impl<T> Way<T> for ViaSerde
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    const NAME: &'static str = "loky::Serde<T> (MessagePack in rkyv)";
    fn encode(v: &T, out: &mut AlignedVec) {
        Serde::from_ref(v).encode(out).unwrap()
    }
    fn decode(bytes: &[u8]) -> T {
        <Serde<T> as Payload>::decode(bytes).unwrap().0
    }
}

struct ViaCodec<C>(std::marker::PhantomData<C>);
impl<T> Way<T> for ViaCodec<MsgPack>
where
    MsgPack: Codec<T>,
{
    const NAME: &'static str = "with_codec::<MsgPack>()";
    fn encode(v: &T, out: &mut AlignedVec) {
        MsgPack::encode(v, out).unwrap()
    }
    fn decode(bytes: &[u8]) -> T {
        MsgPack::decode(bytes).unwrap()
    }
}
impl<T> Way<T> for ViaCodec<Json>
where
    Json: Codec<T>,
{
    const NAME: &'static str = "custom Codec (serde_json)";
    fn encode(v: &T, out: &mut AlignedVec) {
        Json::encode(v, out).unwrap()
    }
    fn decode(bytes: &[u8]) -> T {
        Json::decode(bytes).unwrap()
    }
}

/// Median seconds of one encode + decode over `rounds` rounds of `inner`
/// iterations each.
fn time_round_trip<T, W: Way<T>>(v: &T, rounds: usize, inner: usize) -> (f64, usize) {
    let mut out = AlignedVec::new();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..inner {
            out.clear();
            W::encode(black_box(v), &mut out);
            black_box(W::decode(&out));
        }
        times.push(t.elapsed().as_secs_f64() / inner as f64);
    }
    times.sort_by(f64::total_cmp);
    (times[rounds / 2], out.len())
}

fn p50_round_trip(f: impl Fn() -> Small) -> f64 {
    let mut lat: Vec<f64> = (0..3000)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    lat[lat.len() / 2]
}

fn row<W: Way<Small> + Way<Vec<f64>>>(large: &Vec<f64>, round_trip_us: f64) {
    let (s, small_len) = time_round_trip::<Small, W>(&small(), 21, 2000);
    let (l, large_len) = time_round_trip::<Vec<f64>, W>(large, 9, 1);
    let bytes = (large.len() * 8) as f64;
    println!(
        "| {} | {:.0} ns ({} B) | {:.2} GB/s ({:.0} MiB encoded) | {:.1} µs |",
        <W as Way<Small>>::NAME,
        s * 1e9,
        small_len,
        bytes / l / 1e9,
        large_len as f64 / (1 << 20) as f64,
        round_trip_us
    );
}

fn table() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .expect("pool");
    let echo = |s: Small| s;
    let rk = ex.with_codec::<Rkyv>();
    let mp = ex.with_codec::<MsgPack>();
    let js = ex.with_codec::<Json>();
    for _ in 0..500 {
        ex.submit(echo, small()).unwrap().result().unwrap();
    }
    let rt_rkyv = p50_round_trip(|| ex.submit(echo, small()).unwrap().result().unwrap());
    let rt_serde = p50_round_trip(|| {
        ex.submit(|s: Serde<Small>| s, Serde(small()))
            .unwrap()
            .result()
            .unwrap()
            .0
    });
    let rt_mp = p50_round_trip(|| mp.submit(echo, small()).unwrap().result().unwrap());
    let rt_js = p50_round_trip(|| js.submit(echo, small()).unwrap().result().unwrap());
    let _ = rk;

    let large: Vec<f64> = (0..(32usize << 20) / 8).map(|i| i as f64 * 0.5).collect();
    println!(
        "\ncodec costs on {} cores (encode + decode, median; round trip = submit + result, p50, 1 warm worker)\n",
        loky::cpu_count()
    );
    println!("| way | small struct | 32 MiB `Vec<f64>` | round trip, small struct |");
    println!("|---|---|---|---|");
    row::<ViaPayload>(&large, rt_rkyv * 1e6);
    row::<ViaSerde>(&large, rt_serde * 1e6);
    row::<ViaCodec<MsgPack>>(&large, rt_mp * 1e6);
    row::<ViaCodec<Json>>(&large, rt_js * 1e6);
    // The bad case for serde: bytes travel one element at a time.
    let bytes: Vec<u8> = (0..64usize << 20).map(|i| (i % 251) as u8).collect();
    let (b, blen) = time_round_trip::<Vec<u8>, ViaSerde>(&bytes, 3, 1);
    let (r, _) = time_round_trip::<Vec<u8>, ViaPayload>(&bytes, 3, 1);
    println!(
        "\n64 MiB `Vec<u8>`: rkyv {:.2} GB/s; Serde<Vec<u8>> {:.3} GB/s ({:.0} MiB encoded)\n",
        bytes.len() as f64 / r / 1e9,
        bytes.len() as f64 / b / 1e9,
        blen as f64 / (1 << 20) as f64
    );
}

fn codecs(c: &mut Criterion) {
    table();
    let mut g = c.benchmark_group("codec/small struct");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let v = small();
    fn bench<W: Way<Small>>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        v: &Small,
    ) {
        let mut out = AlignedVec::new();
        g.bench_function(<W as Way<Small>>::NAME, |b| {
            b.iter(|| {
                out.clear();
                W::encode(black_box(v), &mut out);
                W::decode(&out)
            })
        });
    }
    bench::<ViaPayload>(&mut g, &v);
    bench::<ViaSerde>(&mut g, &v);
    bench::<ViaCodec<MsgPack>>(&mut g, &v);
    bench::<ViaCodec<Json>>(&mut g, &v);
    g.finish();

    let mut g = c.benchmark_group("codec/Vec<f64>");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let large: Vec<f64> = (0..(8usize << 20) / 8).map(|i| i as f64 * 0.5).collect();
    g.throughput(Throughput::Bytes((large.len() * 8) as u64));
    fn bench_large<W: Way<Vec<f64>>>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        v: &Vec<f64>,
    ) {
        let mut out = AlignedVec::new();
        g.bench_with_input(
            BenchmarkId::new(<W as Way<Vec<f64>>>::NAME, "8 MiB"),
            v,
            |b, v| {
                b.iter(|| {
                    out.clear();
                    W::encode(v, &mut out);
                    W::decode(&out)
                })
            },
        );
    }
    bench_large::<ViaPayload>(&mut g, &large);
    bench_large::<ViaSerde>(&mut g, &large);
    bench_large::<ViaCodec<MsgPack>>(&mut g, &large);
    bench_large::<ViaCodec<Json>>(&mut g, &large);
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
