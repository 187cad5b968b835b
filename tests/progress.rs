//! Progress bars on maps (feature `progress`): the bar follows the items
//! done and ends at the total, for ordered and unordered maps (of the
//! executor and of a codec view), inputs of known and unknown length, and
//! items that fail; a map cut short leaves its bar at the items done.
#![cfg(feature = "progress")]

use std::time::Duration;

use indicatif::ProgressBar;
use loky::{Error, ProcessPoolExecutor};

fn pool() -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap()
}

#[test]
fn a_bar_reaches_the_total_of_an_ordered_map() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    let mut seen = 0u64;
    for (i, r) in ex
        .map(|x: u64| x * 2, 0..1_000_000)
        .progress_with(bar.clone())
        .enumerate()
    {
        assert_eq!(r.unwrap(), i as u64 * 2);
        // Results are counted when their chunk finished, before they are
        // yielded.
        assert!(
            bar.position() > i as u64,
            "item {i}: bar at {}",
            bar.position()
        );
        seen += 1;
        if seen == 1_000_000 {
            // Counted, not just set to the length when finished.
            assert_eq!(bar.position(), 1_000_000);
            assert!(!bar.is_finished(), "finished before the map ended");
        }
    }
    assert_eq!(seen, 1_000_000);
    assert_eq!(
        bar.length(),
        Some(1_000_000),
        "the length comes from the range"
    );
    assert_eq!(bar.position(), 1_000_000);
    assert!(bar.is_finished());
}

#[test]
fn a_bar_reaches_the_total_of_an_unordered_map() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    let mut m = ex
        .map_unordered(|x: u64| x + 1, 0..100_000)
        .progress_with(bar.clone());
    assert_eq!(m.by_ref().take(100_000).count(), 100_000);
    assert_eq!((bar.position(), bar.length()), (100_000, Some(100_000)));
    assert!(!bar.is_finished(), "finished before the map ended");
    assert!(m.next().is_none());
    assert!(bar.is_finished());
}

#[test]
fn an_input_of_unknown_length_counts_without_a_total() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    // `filter` cannot tell its length in advance.
    let input = (0..30_000u64).filter(|x| x % 3 == 0);
    let mut m = ex.map(|x: u64| x, input).progress_with(bar.clone());
    assert_eq!(m.by_ref().take(10_000).count(), 10_000);
    assert_eq!((bar.position(), bar.length()), (10_000, None));
    assert!(m.next().is_none());
    assert!(bar.is_finished());
}

#[test]
fn failed_items_count_as_done() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    let mut m = ex
        .map(
            |x: u64| {
                assert!(x % 100 != 7, "item {x} fails");
                x
            },
            0..1000,
        )
        .progress_with(bar.clone());
    let failed = m.by_ref().take(1000).filter(|r| r.is_err()).count();
    assert_eq!(failed, 10);
    assert_eq!(bar.position(), 1000);
    assert!(m.next().is_none());
}

#[test]
fn a_bar_attached_midway_starts_at_the_items_done() {
    let ex = pool();
    let mut m = ex.map(|x: u64| x, 0..50_000).chunksize(1000);
    assert_eq!(m.by_ref().take(10).count(), 10); // the first chunk finished
    let bar = ProgressBar::hidden();
    let mut m = m.progress_with(bar.clone());
    assert!(bar.position() >= 1000, "the first chunk is counted at once");
    assert_eq!(m.by_ref().take(49_990).count(), 49_990);
    assert_eq!((bar.position(), bar.length()), (50_000, Some(50_000)));
    assert!(m.next().is_none());
}

#[test]
fn a_bar_with_its_own_length_keeps_it() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    bar.set_length(123);
    let n = ex
        .map(|x: u64| x, 0..1000)
        .progress_with(bar.clone())
        .count();
    assert_eq!(n, 1000);
    assert_eq!(bar.length(), Some(123));
    assert!(bar.is_finished());
}

#[test]
fn default_bars_run_to_the_end() {
    // Drawn on stderr when it is a terminal, hidden otherwise (as here).
    let ex = pool();
    let n = ex.map(|x: u64| x, 0..20_000).progress().count();
    assert_eq!(n, 20_000);
    let n = ex
        .map_unordered(|x: u64| x, (0..20_000u64).filter(|x| x % 2 == 0))
        .progress()
        .count();
    assert_eq!(n, 10_000);
}

#[test]
fn a_bar_reaches_the_total_of_an_ordered_codec_map() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    let mut m = ex
        .with_codec::<loky::Rkyv>()
        .map(|x: u64| x * 3, 0..100_000)
        .chunksize(1000)
        .progress_with(bar.clone());
    for i in 0..100_000u64 {
        assert_eq!(m.next().unwrap().unwrap(), i * 3);
        // Counted when its chunk finished, before it is yielded.
        assert!(bar.position() > i, "item {i}: bar at {}", bar.position());
    }
    assert_eq!((bar.position(), bar.length()), (100_000, Some(100_000)));
    assert!(!bar.is_finished(), "finished before the map ended");
    assert!(m.next().is_none());
    assert!(bar.is_finished());
}

#[test]
fn a_bar_reaches_the_total_of_an_unordered_codec_map() {
    let ex = pool();
    let bar = ProgressBar::hidden();
    // Unknown length: the bar counts without a total.
    let input = (0..60_000u64).filter(|x| x % 2 == 0);
    let mut m = ex
        .with_codec::<loky::Rkyv>()
        .map_unordered(|x: u64| x + 1, input)
        .progress_with(bar.clone())
        // Set after the bar: the bar stays.
        .chunksize(500);
    assert_eq!(m.by_ref().take(30_000).count(), 30_000);
    assert_eq!((bar.position(), bar.length()), (30_000, None));
    assert!(!bar.is_finished(), "finished before the map ended");
    assert!(m.next().is_none());
    assert!(bar.is_finished());
}

#[test]
fn default_bars_of_codec_maps_run_to_the_end() {
    let ex = pool();
    let codec = ex.with_codec::<loky::Rkyv>();
    let n = codec.map(|x: u64| x, 0..20_000).progress().count();
    assert_eq!(n, 20_000);
    let n = codec
        .map_unordered(|x: u64| x, (0..20_000u64).filter(|x| x % 2 == 0))
        .progress()
        .count();
    assert_eq!(n, 10_000);
}

/// The outcomes of `m` when `ex` is shut down as soon as the first came:
/// one per item of the chunks submitted by then, then one error for the
/// rest.
fn outcomes_around_a_shutdown<T>(
    ex: &ProcessPoolExecutor,
    mut m: impl Iterator<Item = T>,
) -> Vec<T> {
    let mut out = vec![m.next().expect("a first outcome")];
    ex.shutdown(true, false, false);
    out.extend(m);
    out
}

/// `bar` followed a map of 10 000 items that ended early with one error
/// after `outcomes - 1` per-item outcomes: it stopped there, and ended.
fn assert_abandoned_at_the_items_done(bar: &ProgressBar, outcomes: usize, what: &str) {
    assert!(outcomes < 10_000, "{what}: {outcomes} outcomes");
    // Finishing it would have moved it to its length (a default bar would
    // also have been cleared, hiding where the map stopped).
    assert_eq!(
        (bar.position(), bar.length()),
        (outcomes as u64 - 1, Some(10_000)),
        "{what}"
    );
    assert!(bar.is_finished(), "{what}: the bar did not end");
}

#[test]
fn a_map_cut_short_by_a_shutdown_abandons_its_bar_at_the_items_done() {
    let shut_down =
        |r: Option<&Result<u64, Error>>| matches!(r, Some(Err(Error::ShutdownExecutor)));

    let ex = pool();
    let bar = ProgressBar::hidden();
    let m = ex.map(|x: u64| x, 0..10_000).chunksize(10);
    let out = outcomes_around_a_shutdown(&ex, m.progress_with(bar.clone()));
    assert!(shut_down(out.last()), "{:?}", out.last());
    assert_abandoned_at_the_items_done(&bar, out.len(), "ordered");

    let ex = pool();
    let bar = ProgressBar::hidden();
    let m = ex.map_unordered(|x: u64| x, 0..10_000).chunksize(10);
    let out = outcomes_around_a_shutdown(&ex, m.progress_with(bar.clone()));
    assert!(shut_down(out.last().map(|(_, r)| r)), "{:?}", out.last());
    assert_abandoned_at_the_items_done(&bar, out.len(), "unordered");

    let ex = pool();
    let bar = ProgressBar::hidden();
    let m = ex
        .with_codec::<loky::Rkyv>()
        .map(|x: u64| x, 0..10_000)
        .chunksize(10);
    let out = outcomes_around_a_shutdown(&ex, m.progress_with(bar.clone()));
    assert!(shut_down(out.last()), "{:?}", out.last());
    assert_abandoned_at_the_items_done(&bar, out.len(), "codec");
}

#[test]
fn a_map_whose_timeout_leaves_input_unread_abandons_its_bar_at_the_items_done() {
    let ex = pool();
    let nap = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    // An input of unknown length (a filter): one error for the unread rest.
    let bar = ProgressBar::hidden();
    bar.set_length(10_000);
    let naps = std::iter::repeat(5u64).take(10_000).filter(|_| true);
    let out: Vec<_> = ex
        .map(nap, naps)
        .chunksize(1)
        .timeout(Duration::from_millis(300))
        .progress_with(bar.clone())
        .collect();
    assert!(
        matches!(out.last(), Some(Err(Error::TimeLimit))),
        "{:?}",
        out.last()
    );
    assert_abandoned_at_the_items_done(&bar, out.len(), "timeout");
    // Of known length: an error per unread item, and the bar stops at the
    // items that ran (or were stopped), not at the end.
    let bar = ProgressBar::hidden();
    let out: Vec<_> = ex
        .map(nap, std::iter::repeat(5u64).take(10_000))
        .chunksize(1)
        .timeout(Duration::from_millis(300))
        .progress_with(bar.clone())
        .collect();
    assert_eq!(out.len(), 10_000);
    let unread = out
        .iter()
        .rev()
        .take_while(|o| matches!(o, Err(Error::TimeLimit)))
        .count();
    assert!(bar.is_finished(), "the bar was left running");
    assert!(
        bar.position() as usize <= 10_000 - unread + 64 && bar.position() < 10_000,
        "bar at {}, {unread} trailing errors",
        bar.position()
    );
}
