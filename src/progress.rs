//! Progress bars for long maps (feature `progress`, drawn by
//! [indicatif](https://docs.rs/indicatif)).
//!
//! A map advances its bar once per finished chunk, by the chunk's item
//! count, never per item: with automatic chunking that is at most a few
//! thousand updates a second however fast the items are, and indicatif
//! redraws at most 20 times a second.

/// The progress of one map: items done, and its bar if it has one (none
/// without the `progress` feature).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Items whose chunk finished.
    done: usize,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Tracker {
    /// `items` more items are done (called once per finished chunk).
    #[inline]
    pub(crate) fn advance(&mut self, items: usize) {
        self.done += items;
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(items as u64);
        }
    }

    /// The map has yielded everything. If it ran every item (`complete`),
    /// finishes the bar as the bar's `ProgressFinish` says (indicatif's
    /// default clears it). If it was cut short (a chunk could not be
    /// submitted, or its timeout passed, with input left unread), abandons
    /// the bar instead: it ends where the map stopped, at the items done,
    /// and stays drawn, where finishing would move it to its length (and
    /// the default would clear it), as if every item had run. Idempotent.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(crate) fn finish(&mut self, complete: bool) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            if complete {
                bar.finish_using_style();
            } else {
                bar.abandon();
            }
        }
    }

    /// Shows progress on `bar` from now on (advanced at once by the items
    /// already done); its length is set to `total` if it has none.
    #[cfg(feature = "progress")]
    pub(crate) fn attach(&mut self, bar: indicatif::ProgressBar, total: Option<usize>) {
        if let (None, Some(n)) = (bar.length(), total) {
            bar.set_length(n as u64);
        }
        bar.inc(self.done as u64);
        self.bar = Some(bar);
    }
}

#[cfg(feature = "progress")]
mod bars {
    use indicatif::{ProgressBar, ProgressStyle};

    use crate::codec::Payload;
    use crate::map::{Map, MapUnordered};

    /// The bar [`Map::progress`] draws: items done / total with rate and
    /// ETA when the total is known, else a spinner with a count and rate.
    fn default_bar(total: Option<usize>) -> ProgressBar {
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::new(n as u64),
                "[{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec:0}, ETA {eta})",
            ),
            None => (
                ProgressBar::new_spinner(),
                "{spinner} [{elapsed_precise}] {human_pos} items ({per_sec:0})",
            ),
        };
        bar.with_style(ProgressStyle::with_template(template).expect("a valid template"))
    }

    impl<F, A, R, I> Map<F, A, R, I>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: Iterator<Item = A>,
    {
        /// Draws a progress bar on stderr while the map runs: items done /
        /// total, rate and ETA when the input's length is known (an exact
        /// [`size_hint`](Iterator::size_hint), as for ranges, vectors and
        /// slices), else a spinner with a count; nothing is drawn when stderr
        /// is not a terminal. It advances once per finished chunk, not per
        /// item, so it does not slow the map, and is cleared when the map
        /// ends, unless the map was cut short (see
        /// [`progress_with`](Self::progress_with)). Feature `progress`.
        ///
        /// ```
        /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
        /// let total: u64 = ex.map(|x: u64| x % 7, 0..1_000_000).progress().map(|r| r.unwrap()).sum();
        /// assert_eq!(total, 2_999_997);
        /// # Ok::<(), loky::Error>(())
        /// ```
        pub fn progress(self) -> Self {
            let bar = default_bar(self.total_items());
            self.progress_with(bar)
        }

        /// Like [`progress`](Self::progress), with a bar of your own (its
        /// style and message, one of a
        /// [`MultiProgress`](indicatif::MultiProgress), or
        /// [`ProgressBar::hidden`] to follow the position without drawing).
        /// If the bar has no length and the input's length is known, it is
        /// set. The bar advances by the item count of each finished chunk
        /// and is finished when the map ends, as the bar's
        /// [`ProgressFinish`](indicatif::ProgressFinish) says (set it with
        /// [`ProgressBar::with_finish`]; indicatif's default clears the bar).
        /// A map cut short, ending with one error for the input it did not
        /// read (a chunk could not be submitted: the executor was shut down
        /// or the pool broke; or its [`timeout`](Map::timeout) passed),
        /// [abandons](ProgressBar::abandon) the bar instead: it stays
        /// drawn, at the items done, rather than jump to its length.
        ///
        /// ```
        /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
        /// let bar = loky::indicatif::ProgressBar::hidden(); // or your own indicatif 0.18
        /// let n = ex.map(|x: u64| x + 1, 0..1000).progress_with(bar.clone()).count();
        /// assert_eq!((n, bar.position(), bar.length()), (1000, 1000, Some(1000)));
        /// assert!(bar.is_finished());
        /// # Ok::<(), loky::Error>(())
        /// ```
        pub fn progress_with(mut self, bar: ProgressBar) -> Self {
            let total = self.total_items();
            self.tracker_mut().attach(bar, total);
            self
        }
    }

    impl<F, A, R, I> MapUnordered<F, A, R, I>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: Iterator<Item = A>,
    {
        /// See [`Map::progress`]. Feature `progress`.
        pub fn progress(self) -> Self {
            let bar = default_bar(self.inner().total_items());
            self.progress_with(bar)
        }

        /// See [`Map::progress_with`]. Feature `progress`.
        pub fn progress_with(mut self, bar: ProgressBar) -> Self {
            let total = self.inner().total_items();
            self.inner_mut().tracker_mut().attach(bar, total);
            self
        }
    }
}
