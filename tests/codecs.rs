//! Codecs end to end, against real workers: serde interop (`Serde<T>` and
//! the `MsgPack` codec), custom codecs failing or panicking at every stage,
//! and values that are deeply nested or huge.
#![cfg(feature = "serde")]

use std::collections::HashMap;
use std::time::Duration;

use loky::{
    AlignedVec, Codec, CodecStage, Error, MsgPack, ProcessPoolExecutor, Rkyv, Serde, Stats,
};
use serde::{Deserialize, Serialize};

/// Generous bound used only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(120);

fn pool(n: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(n)
        .build()
        .expect("pool")
}

/// Fails unless no worker crashed or was replaced, then proves the pool
/// still runs tasks.
fn assert_intact(ex: &ProcessPoolExecutor) {
    let s: Stats = ex.stats();
    assert_eq!((s.crashed, s.respawned), (0, 0), "{s:?}");
    let f = ex.submit(|x: u64| x + 1, 41).unwrap();
    assert_eq!(f.result_timeout(HANG).unwrap(), 42);
}

fn codec_error(r: Result<impl std::fmt::Debug, Error>) -> (CodecStage, String) {
    match r {
        Err(Error::Codec { stage, message }) => (stage, message),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- serde --

/// A type that derives only serde, with the attributes that need a
/// self-describing format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    lines: Vec<(String, u32)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    note: Option<String>,
    #[serde(flatten)]
    extra: HashMap<String, i64>,
    status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Status {
    Open,
    Shipped { carrier: String },
}

/// A chrono-like timestamp: serialized as an RFC 3339-ish string, with a
/// `Deserialize` that validates (so a bad value fails decoding).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}.{:09}Z", self.secs, self.nanos))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let s = String::deserialize(d)?;
        let body = s
            .strip_suffix('Z')
            .ok_or_else(|| D::Error::custom("missing Z"))?;
        let (secs, nanos) = body
            .split_once('.')
            .ok_or_else(|| D::Error::custom("missing ."))?;
        let nanos: u32 = nanos.parse().map_err(D::Error::custom)?;
        if nanos >= 1_000_000_000 {
            return Err(D::Error::custom(format!("nanos out of range: {nanos}")));
        }
        Ok(Timestamp {
            secs: secs.parse().map_err(D::Error::custom)?,
            nanos,
        })
    }
}

fn order() -> Order {
    Order {
        id: 7,
        lines: vec![("apple".into(), 3), ("pear".into(), 1)],
        note: None,
        extra: HashMap::from([("priority".into(), 2)]),
        status: Status::Shipped {
            carrier: "post".into(),
        },
    }
}

#[test]
fn serde_wrapper_round_trips_serde_only_types() {
    let ex = pool(2);
    let echo_order = ex.submit(|o: Serde<Order>| o, Serde(order())).unwrap();
    let map: HashMap<String, Vec<f64>> =
        HashMap::from([("a".into(), vec![1.0, 2.5]), ("b".into(), vec![])]);
    let echo_map = ex
        .submit(|m: Serde<HashMap<String, Vec<f64>>>| m, Serde(map.clone()))
        .unwrap();
    let json = serde_json::json!({
        "name": "x", "n": [1, -2, 3.5, null, true], "nested": {"deep": [{"k": "v"}]}, "big": u64::MAX
    });
    let echo_json = ex
        .submit(|v: Serde<serde_json::Value>| v, Serde(json.clone()))
        .unwrap();
    let t = Timestamp {
        secs: 1_700_000_000,
        nanos: 123_456_789,
    };
    let later = ex
        .submit(
            |Serde(t): Serde<Timestamp>| {
                Serde(Timestamp {
                    secs: t.secs + 60,
                    ..t
                })
            },
            Serde(t),
        )
        .unwrap();

    assert_eq!(echo_order.result_timeout(HANG).unwrap().0, order());
    assert_eq!(echo_map.result_timeout(HANG).unwrap().0, map);
    assert_eq!(echo_json.result_timeout(HANG).unwrap().0, json);
    assert_eq!(
        later.result_timeout(HANG).unwrap().0,
        Timestamp {
            secs: 1_700_000_060,
            ..t
        }
    );
    assert_intact(&ex);
}

#[test]
fn serde_values_can_be_fields_of_rkyv_types() {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    struct Job {
        id: u32,
        when: Serde<Timestamp>,
        meta: Serde<serde_json::Value>,
    }
    let ex = pool(1);
    let job = Job {
        id: 3,
        when: Serde(Timestamp { secs: 1, nanos: 2 }),
        meta: Serde(serde_json::json!({"tags": ["x", "y"]})),
    };
    let tags = ex
        .submit(
            |j: Job| (j.id, j.when.secs, j.meta["tags"].as_array().unwrap().len()),
            job,
        )
        .unwrap();
    assert_eq!(tags.result_timeout(HANG).unwrap(), (3, 1, 2));
}

#[test]
fn msgpack_codec_needs_no_wrapper() {
    let ex = pool(2);
    let serde_ex = ex.with_codec::<MsgPack>();
    let n = serde_ex
        .submit(|o: Order| o.lines.iter().map(|l| l.1).sum::<u32>(), order())
        .unwrap();
    let v = serde_ex
        .submit(
            |v: serde_json::Value| v["a"].as_u64().unwrap_or(0) * 2,
            serde_json::json!({"a": 21}),
        )
        .unwrap();
    assert_eq!(n.result_timeout(HANG).unwrap(), 4);
    assert_eq!(v.result_timeout(HANG).unwrap(), 42);

    let inputs: Vec<Timestamp> = (0..1000).map(|i| Timestamp { secs: i, nanos: 5 }).collect();
    let secs: Vec<i64> = serde_ex
        .map(|t: Timestamp| t.secs * 2, inputs.clone())
        .chunksize(64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(secs, (0..1000).map(|i| i * 2).collect::<Vec<_>>());

    let mut unordered: Vec<(usize, i64)> = serde_ex
        .map_unordered(|t: Timestamp| t.secs, inputs)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    assert_eq!(unordered.len(), 1000);
    assert!(unordered.iter().all(|&(i, s)| i as i64 == s));
    assert_intact(&ex);
}

#[test]
fn rkyv_codec_matches_the_default() {
    let ex = pool(1);
    let rk = ex.with_codec::<Rkyv>();
    let f = rk
        .submit(|v: Vec<u32>| v.iter().sum::<u32>(), vec![1, 2, 3])
        .unwrap();
    assert_eq!(f.result_timeout(HANG).unwrap(), 6);
    let squares: Vec<u64> = rk
        .map(|x: u64| x * x, 0..500)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(squares[499], 499 * 499);
}

#[test]
fn codec_maps_have_size_hints_and_time_limits() {
    let ex = pool(2);
    let rk = ex.with_codec::<Rkyv>();
    let mut m = rk.map(|x: u64| x, 0..100).chunksize(10);
    assert_eq!(m.size_hint(), (0, Some(100)));
    assert_eq!(m.by_ref().count(), 100);
    assert_eq!(m.size_hint(), (0, Some(0)));
    assert!(m.next().is_none(), "fused");
    let u = rk.map_unordered(|x: u64| x, 0..100).chunksize(10);
    assert_eq!(u.size_hint(), (0, Some(100)));
    let naps = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    let timed: Vec<_> = rk
        .map(naps, [1, 60_000])
        .chunksize(1)
        .timeout(Duration::from_secs(2))
        .collect();
    assert!(timed[0].is_ok(), "{timed:?}");
    assert!(matches!(timed[1], Err(Error::TimeLimit)), "{timed:?}");
    let timed: Vec<_> = rk
        .map_unordered(naps, [60_000])
        .timeout(Duration::from_secs(2))
        .collect();
    assert!(
        matches!(timed[..], [(0, Err(Error::TimeLimit))]),
        "{timed:?}"
    );
}

#[test]
fn a_serde_value_the_worker_rejects_fails_only_its_future() {
    let ex = pool(1);
    let bad = Timestamp {
        secs: 0,
        nanos: 2_000_000_000,
    };
    let (stage, message) = codec_error(
        ex.submit(|t: Serde<Timestamp>| t.secs, Serde(bad))
            .unwrap()
            .result_timeout(HANG),
    );
    assert_eq!(stage, CodecStage::DecodeArgument);
    assert!(message.contains("nanos out of range"), "{message}");
    let (stage, message) = codec_error(
        ex.with_codec::<MsgPack>()
            .submit(|t: Timestamp| t.secs, bad)
            .unwrap()
            .result_timeout(HANG),
    );
    assert_eq!(stage, CodecStage::DecodeArgument);
    assert!(message.contains("Timestamp"), "{message}");
    // ... and a result the parent rejects.
    let (stage, _) = codec_error(
        ex.submit(
            |_: ()| {
                Serde(Timestamp {
                    secs: 0,
                    nanos: 2_000_000_000,
                })
            },
            (),
        )
        .unwrap()
        .result_timeout(HANG),
    );
    assert_eq!(stage, CodecStage::DecodeResult);
    assert_intact(&ex);
}

// ------------------------------------------------------ failing codecs --

#[derive(Debug, PartialEq)]
struct Arg(u64);
#[derive(Debug, PartialEq)]
struct Ret(u64);

const ENCODE_ARG: u8 = 1; // in the parent
const DECODE_ARG: u8 = 2; // in the worker
const ENCODE_RET: u8 = 3; // in the worker
const DECODE_RET: u8 = 4; // in the parent

/// A codec that fails (or panics, with `PANIC`) at stage `STAGE` only.
struct Faulty<const STAGE: u8, const PANIC: bool>;

fn trip<const STAGE: u8, const PANIC: bool>(at: u8) -> Result<(), String> {
    if STAGE != at {
        return Ok(());
    }
    let what = format!("deliberate failure at stage {at}");
    if PANIC {
        panic!("{what}");
    }
    Err(what)
}

fn write_u64(v: u64, out: &mut AlignedVec) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn read_u64(bytes: &[u8]) -> Result<u64, String> {
    Ok(u64::from_le_bytes(
        bytes.try_into().map_err(|_| "need 8 bytes".to_string())?,
    ))
}

impl<const S: u8, const P: bool> Codec<Arg> for Faulty<S, P> {
    fn encode(value: &Arg, out: &mut AlignedVec) -> Result<(), String> {
        trip::<S, P>(ENCODE_ARG)?;
        write_u64(value.0, out);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Arg, String> {
        trip::<S, P>(DECODE_ARG)?;
        read_u64(bytes).map(Arg)
    }
}

impl<const S: u8, const P: bool> Codec<Ret> for Faulty<S, P> {
    fn encode(value: &Ret, out: &mut AlignedVec) -> Result<(), String> {
        trip::<S, P>(ENCODE_RET)?;
        write_u64(value.0, out);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Ret, String> {
        trip::<S, P>(DECODE_RET)?;
        read_u64(bytes).map(Ret)
    }
}

fn double(a: Arg) -> Ret {
    Ret(a.0 * 2)
}

/// Runs one task and one map chunk through `Faulty<S, P>`; returns the
/// outcome of each.
fn run_faulty<const S: u8, const P: bool>(
    ex: &ProcessPoolExecutor,
) -> (Result<Ret, Error>, Vec<Result<Ret, Error>>) {
    let faulty = ex.with_codec::<Faulty<S, P>>();
    let single = faulty
        .submit(double, Arg(21))
        .and_then(|f| f.result_timeout(HANG));
    let mapped: Vec<_> = faulty.map(double, (0..3).map(Arg)).chunksize(3).collect();
    (single, mapped)
}

#[test]
fn a_codec_that_works_round_trips() {
    let ex = pool(1);
    let (single, mapped) = run_faulty::<0, false>(&ex);
    assert_eq!(single.unwrap(), Ret(42));
    let mapped: Vec<Ret> = mapped.into_iter().map(Result::unwrap).collect();
    assert_eq!(mapped, [Ret(0), Ret(2), Ret(4)]);
}

#[test]
fn a_failing_encode_in_the_parent_is_an_err_from_submit() {
    let ex = pool(1);
    let faulty = ex.with_codec::<Faulty<ENCODE_ARG, false>>();
    let rejected = faulty.try_submit(double, Arg(21)).unwrap_err();
    assert_eq!(rejected.arg, Arg(21), "the argument comes back");
    let (stage, message) = codec_error(Err::<(), _>(rejected.error));
    assert_eq!(stage, CodecStage::EncodeArgument);
    assert!(
        message.contains("deliberate failure at stage 1"),
        "{message}"
    );

    let (single, mapped) = run_faulty::<ENCODE_ARG, false>(&ex);
    assert_eq!(codec_error(single).0, CodecStage::EncodeArgument);
    // In a map, every item of the chunk that cannot be encoded gets the
    // error (and the map goes on: see below).
    assert_eq!(mapped.len(), 3);
    for item in mapped {
        assert_eq!(codec_error(item).0, CodecStage::EncodeArgument);
    }
    assert_intact(&ex);
}

/// rkyv, except that it refuses to encode 7.
struct RejectsSeven;

impl Codec<u64> for RejectsSeven {
    fn encode(value: &u64, out: &mut AlignedVec) -> Result<(), String> {
        if *value == 7 {
            return Err("seven is not welcome".into());
        }
        <loky::Rkyv as Codec<u64>>::encode(value, out)
    }
    fn decode(bytes: &[u8]) -> Result<u64, String> {
        <loky::Rkyv as Codec<u64>>::decode(bytes)
    }
}

#[test]
fn an_item_that_cannot_be_encoded_fails_its_chunk_and_the_map_goes_on() {
    let ex = pool(2);
    let picky = ex.with_codec::<RejectsSeven>();
    let double = |x: u64| x * 2;
    // One item per chunk: only 7 fails.
    let out: Vec<_> = picky.map(double, 0..20u64).chunksize(1).collect();
    assert_eq!(out.len(), 20);
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v, 2 * i as u64),
            Err(e) => {
                assert_eq!(i, 7, "{e}");
                assert_eq!(codec_error(Err::<u64, _>(e)).0, CodecStage::EncodeArgument);
            }
        }
    }
    // Chunks of 5: the chunk holding 7 fails whole, the others succeed.
    let out: Vec<_> = picky.map(double, 0..20u64).chunksize(5).collect();
    let failed: Vec<usize> = (0..20).filter(|&i| out[i].is_err()).collect();
    assert_eq!(failed, [5, 6, 7, 8, 9]);
    assert_eq!(*out[19].as_ref().unwrap(), 38);
    assert_intact(&ex);
}

#[test]
fn failing_codecs_fail_only_their_future() {
    let ex = pool(2);
    for (stage, (single, mapped)) in [
        (
            CodecStage::DecodeArgument,
            run_faulty::<DECODE_ARG, false>(&ex),
        ),
        (
            CodecStage::EncodeResult,
            run_faulty::<ENCODE_RET, false>(&ex),
        ),
        (
            CodecStage::DecodeResult,
            run_faulty::<DECODE_RET, false>(&ex),
        ),
    ] {
        let (got, message) = codec_error(single);
        assert_eq!(got, stage);
        assert!(message.contains("deliberate failure"), "{message}");
        assert_eq!(mapped.len(), 3, "{stage}: every item gets its error");
        for item in mapped {
            assert_eq!(codec_error(item).0, stage);
        }
        assert_intact(&ex);
    }
}

#[test]
fn panicking_codecs_are_caught_at_every_stage() {
    let ex = pool(2);
    // Parent side: codec errors, the caller does not panic.
    let (single, _) = run_faulty::<ENCODE_ARG, true>(&ex);
    let (stage, message) = codec_error(single);
    assert_eq!(stage, CodecStage::EncodeArgument);
    assert!(message.contains("panicked"), "{message}");
    let (single, mapped) = run_faulty::<DECODE_RET, true>(&ex);
    let (stage, message) = codec_error(single);
    assert_eq!(stage, CodecStage::DecodeResult);
    assert!(
        message.contains("deliberate failure at stage 4"),
        "{message}"
    );
    assert!(mapped.iter().all(|r| r.is_err()));
    // Worker side: the panic is reported like a task panic; the worker lives.
    for (single, mapped) in [
        run_faulty::<DECODE_ARG, true>(&ex),
        run_faulty::<ENCODE_RET, true>(&ex),
    ] {
        match single {
            Err(Error::TaskPanicked { message, .. }) => {
                assert!(message.contains("deliberate failure"), "{message}")
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        assert!(mapped.iter().all(|r| r.is_err()));
    }
    assert_intact(&ex);
}

/// A codec that clears the buffer (destroying the message header).
struct Clobber;

impl Codec<u64> for Clobber {
    fn encode(value: &u64, out: &mut AlignedVec) -> Result<(), String> {
        out.clear();
        write_u64(*value, out);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<u64, String> {
        read_u64(bytes)
    }
}

#[test]
fn a_codec_that_clobbers_the_header_is_refused() {
    let ex = pool(1);
    let (stage, message) = codec_error(ex.with_codec::<Clobber>().submit(|x: u64| x, 1));
    assert_eq!(stage, CodecStage::EncodeArgument);
    assert!(message.contains("must append"), "{message}");
    assert_intact(&ex);
}

/// Counts the values it decodes in this process (the parent decodes only
/// results).
struct Counting;

static DECODED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Codec<u64> for Counting {
    fn encode(value: &u64, out: &mut AlignedVec) -> Result<(), String> {
        write_u64(*value, out);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<u64, String> {
        DECODED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        read_u64(bytes)
    }
}

#[test]
fn the_late_result_of_a_stopped_task_is_not_decoded() {
    fn nap(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    let ex = pool(1);
    let c = ex.with_codec::<Counting>();
    assert_eq!(c.submit(nap, 0).unwrap().result_timeout(HANG).unwrap(), 0);
    let running = c.submit(nap, 200).unwrap();
    // Behind `running` in the worker's ring: stopping it fails it at once,
    // and the worker skips it (its empty answer is not decoded either).
    let behind = c.submit(nap, 1).unwrap();
    let start = std::time::Instant::now();
    while !running.running() {
        assert!(start.elapsed() < HANG);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(behind.kill());
    assert!(matches!(behind.result_timeout(HANG), Err(Error::Cancelled)));
    let before = DECODED.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(running.result_timeout(HANG).unwrap(), 200);
    // Behind both in the ring: when it is back, `behind`'s answer came too.
    assert_eq!(c.submit(nap, 2).unwrap().result_timeout(HANG).unwrap(), 2);
    assert_eq!(
        DECODED.load(std::sync::atomic::Ordering::SeqCst) - before,
        2,
        "only the two wanted results were decoded"
    );
}

// ------------------------------------------------------- bad input -----

/// A linked list of `depth` levels, dropped without recursion.
#[derive(Serialize, Deserialize)]
struct Nest {
    next: Option<Box<Nest>>,
}

impl Drop for Nest {
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(mut n) = next {
            next = n.next.take();
        }
    }
}

impl std::fmt::Debug for Nest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nest({} levels)", depth(self))
    }
}

fn nest(depth: usize) -> Nest {
    let mut v = Nest { next: None };
    for _ in 0..depth {
        v = Nest {
            next: Some(Box::new(v)),
        };
    }
    v
}

fn depth(n: &Nest) -> usize {
    let mut d = 0;
    let mut at = n;
    while let Some(next) = &at.next {
        d += 1;
        at = next;
    }
    d
}

#[test]
fn deeply_nested_values_are_clear_errors() {
    let ex = pool(1);
    // Moderate nesting round-trips.
    let d = ex
        .submit(|n: Serde<Nest>| depth(&n), Serde(nest(100)))
        .unwrap();
    assert_eq!(d.result_timeout(HANG).unwrap(), 100);

    // Too deep to encode in the parent: an error from submit, no overflow.
    let (stage, message) =
        codec_error(ex.submit(|n: Serde<Nest>| depth(&n), Serde(nest(1_000_000))));
    assert_eq!(stage, CodecStage::EncodeArgument);
    assert!(message.contains("nested too deeply"), "{message}");

    // Too deep for the worker to decode: encoded on a big stack here.
    let ex2 = ex.clone();
    let fut = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            ex2.with_codec::<MsgPack>()
                .submit(|n: Nest| depth(&n), nest(50_000))
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let (stage, message) = codec_error(fut.result_timeout(HANG));
    assert_eq!(stage, CodecStage::DecodeArgument);
    assert!(message.contains("nested too deeply"), "{message}");

    // Too deep for the worker to encode.
    let (stage, message) = codec_error(
        ex.submit(|n: usize| Serde(nest(n)), 1_000_000)
            .unwrap()
            .result_timeout(HANG),
    );
    assert_eq!(stage, CodecStage::EncodeResult);
    assert!(message.contains("nested too deeply"), "{message}");
    assert_intact(&ex);
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64))
}

fn big_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn huge_serde_value(len: usize) {
    let ex = pool(1);
    let data = big_bytes(len);
    let expected = (data.len(), checksum(&data));
    let f = ex
        .submit(
            |Serde(v): Serde<Vec<u8>>| (v.len(), checksum(&v)),
            Serde(data),
        )
        .unwrap();
    assert_eq!(f.result_timeout(HANG).unwrap(), expected);
    assert_intact(&ex);
}

#[test]
fn a_64_mib_serde_value_round_trips() {
    huge_serde_value(64 << 20);
}

#[test]
#[ignore = "1 GiB through serde: ~6 GiB of memory, ~25 s in release, minutes in debug"]
fn a_1_gib_serde_value_round_trips() {
    huge_serde_value(1 << 30);
}

/// rkyv, but its batches decode with one item too many.
struct OneTooMany;

impl Codec<u64> for OneTooMany {
    fn encode(value: &u64, out: &mut AlignedVec) -> Result<(), String> {
        <loky::Rkyv as Codec<u64>>::encode(value, out)
    }
    fn decode(bytes: &[u8]) -> Result<u64, String> {
        <loky::Rkyv as Codec<u64>>::decode(bytes)
    }
    fn encode_batch(items: &[u64], out: &mut AlignedVec) -> Result<(), String> {
        <loky::Rkyv as Codec<u64>>::encode_batch(items, out)
    }
    fn decode_batch(bytes: &[u8]) -> Result<Vec<u64>, String> {
        let mut items = <loky::Rkyv as Codec<u64>>::decode_batch(bytes)?;
        items.insert(0, 999);
        Ok(items)
    }
}

#[test]
fn a_chunk_that_comes_back_with_the_wrong_number_of_outcomes_is_an_error() {
    let ex = pool(1);
    let out: Vec<_> = ex
        .with_codec::<OneTooMany>()
        .map(|x: u64| x + 1, 0..4u64)
        .chunksize(4)
        .collect();
    // (The worker decodes five arguments, the parent six values.) Not
    // values shifted by one: an error for each item.
    assert_eq!(out.len(), 4);
    for r in out {
        let (stage, message) = codec_error(r);
        assert_eq!(stage, CodecStage::DecodeResult);
        assert!(
            message.contains("a chunk of 4 items came back with"),
            "{message}"
        );
    }
    assert_intact(&ex);
}

/// `Arg(k)` scales the sum of the slice, read in place.
fn scaled_sum(xs: &[u64], k: Arg) -> Ret {
    Ret(xs.iter().sum::<u64>() * k.0)
}

#[test]
fn slice_tasks_take_their_argument_and_result_through_the_codec() {
    let ex = pool(1);
    // Past the direct-to-shared-memory threshold, and small.
    for len in [10u64, 300_000] {
        let data: Vec<u64> = (0..len).collect();
        let sum = len * (len - 1) / 2;
        let ok = ex.with_codec::<Faulty<0, false>>();
        let got = ok.submit_slice(scaled_sum, &data, Arg(3)).unwrap();
        assert_eq!(got.result_timeout(HANG).unwrap(), Ret(3 * sum), "{len}");
    }
    let data = [1u64, 2, 3];
    // Each stage's failure is the codec error of that stage, for this
    // task only.
    let encode = ex.with_codec::<Faulty<ENCODE_ARG, false>>();
    let (stage, _) = codec_error(encode.submit_slice(scaled_sum, &data, Arg(1)));
    assert_eq!(stage, CodecStage::EncodeArgument);
    for (stage, outcome) in [
        (
            CodecStage::DecodeArgument,
            ex.with_codec::<Faulty<DECODE_ARG, false>>()
                .submit_slice(scaled_sum, &data, Arg(1))
                .and_then(|f| f.result_timeout(HANG)),
        ),
        (
            CodecStage::EncodeResult,
            ex.with_codec::<Faulty<ENCODE_RET, false>>()
                .submit_slice(scaled_sum, &data, Arg(1))
                .and_then(|f| f.result_timeout(HANG)),
        ),
        (
            CodecStage::DecodeResult,
            ex.with_codec::<Faulty<DECODE_RET, false>>()
                .submit_slice_with_timeout(scaled_sum, &data, Arg(1), HANG)
                .and_then(|f| f.result_timeout(HANG)),
        ),
    ] {
        let (got, message) = codec_error(outcome);
        assert_eq!(got, stage);
        assert!(message.contains("deliberate failure"), "{message}");
    }
    assert_intact(&ex);
}
