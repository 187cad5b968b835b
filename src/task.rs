//! What a task function must be, with compile errors that say how to fix it.

/// A function that can run in a worker: a fn item or a closure **without
/// captures**, taking one argument `A` and returning `R`.
///
/// It is implemented for every `Fn(A) -> R + Copy + Send + 'static`; you
/// never implement it yourself. Its only purpose is to turn the common
/// mistakes into plain advice at compile time.
///
/// A task travels as the address of its code, so it cannot carry data:
/// whatever a closure would capture goes in the argument instead.
///
/// ```
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// fn square(x: u64) -> u64 { x * x }
/// let offset = 10u64;
/// let a = ex.submit(square, 3)?;                                  // a fn item
/// let b = ex.submit(|(x, k): (u64, u64)| x + k, (1, offset))?;    // state in the argument
/// assert_eq!((a.result()?, b.result()?), (9, 11));
/// # Ok::<(), loky::Error>(())
/// ```
///
/// Calling the function instead of passing it:
///
/// ```compile_fail,E0277
/// # let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// fn square(x: u64) -> u64 { x * x }
/// let _ = ex.submit(square(3), 3u64);
/// // error[E0277]: `u64` is not a task function
/// //   = note: pass the function itself, not the result of calling it:
/// //           `submit(f, arg)`, not `submit(f(arg), ..)`
/// ```
///
/// Capturing a variable that is not `Copy` (here a `String`):
///
/// ```compile_fail,E0277
/// # let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// let prefix = String::from("id-");
/// let _ = ex.submit(move |x: u64| format!("{prefix}{x}"), 1);
/// // error[E0277]: the trait bound `String: Copy` is not satisfied in `{closure}`
/// //   = note: required for `{closure}` to implement `TaskFn<u64, String>`
/// ```
///
/// Capturing a `Copy` variable compiles the closure but fails when it is
/// instantiated (`cargo build`/`cargo test`; `cargo check` does not get
/// that far):
///
/// ```compile_fail,E0080
/// # let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// let offset = 10u64;
/// let _ = ex.submit(move |x: u64| x + offset, 1);
/// // error[E0080]: evaluation panicked: loky: this task carries data: a closure
/// //               that captures variables, or a fn pointer ...
/// ```
///
/// Taking another type than the argument's is rustc's own clear error:
///
/// ```compile_fail,E0631
/// # let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// let _ = ex.submit(|x: u32| x + 1, 1u64);
/// // error[E0631]: type mismatch in closure arguments
/// //   = note: expected closure signature `fn(u64) -> _`
/// //              found closure signature `fn(u32) -> _`
/// ```
///
/// # Choosing the function at run time
///
/// A function pointer (`fn(u64) -> u64`, from a table of functions or a
/// `match`) is data too: the worker could not tell which function it
/// points to, and it fails like a capturing closure (`E0080`, "this task
/// carries data"). A scheduler that picks the work at run time sends its
/// choice in the argument, and one task function dispatches on it:
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum Job {
///     Square(u64),
///     Greet(String),
/// }
///
/// fn run(job: loky::Serde<Job>) -> String {
///     match job.0 {
///         Job::Square(x) => (x * x).to_string(),
///         Job::Greet(name) => format!("hello {name}"),
///     }
/// }
///
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let jobs = [Job::Square(7), Job::Greet("loky".into())];
/// let futures: Vec<_> = jobs
///     .into_iter()
///     .map(|job| ex.submit(run, loky::Serde(job)))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(futures[0].result()?, "49");
/// assert_eq!(futures[1].result()?, "hello loky");
/// # Ok::<(), loky::Error>(())
/// ```
///
/// ```compile_fail,E0080
/// # let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// let f: fn(u64) -> u64 = |x| x + 1;
/// let _ = ex.submit(f, 1);
/// // error[E0080]: evaluation panicked: loky: this task carries data: a closure
/// //               that captures variables, or a fn pointer ...
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task function",
    label = "expected a fn item or a closure without captures",
    note = "pass the function itself, not the result of calling it: `submit(f, arg)`, not `submit(f(arg), ..)`",
    note = "a task takes exactly one argument, the one given to `submit`/`map`; use a tuple for several",
    note = "a task cannot capture variables: pass them in the argument instead, e.g. `submit(|(x, k): (u64, u64)| x + k, (x, k))`"
)]
pub trait TaskFn<A, R>: Fn(A) -> R + Copy + Send + 'static {}

impl<F, A, R> TaskFn<A, R> for F where F: Fn(A) -> R + Copy + Send + 'static {}

/// A slice task: `f(&[T], arg) -> R`, for
/// [`submit_slice`](crate::ProcessPoolExecutor::submit_slice). The same
/// rules as [`TaskFn`]: a fn item or a closure that captures nothing.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a slice task function",
    label = "expected a fn item or a closure without captures, taking `(&[T], arg)`",
    note = "a slice task takes the slice and one argument: `submit_slice(|xs: &[f64], k: f64| .., &data, k)`",
    note = "a task cannot capture variables: pass them in the argument instead"
)]
pub trait SliceTaskFn<T, A, R>: Fn(&[T], A) -> R + Copy + Send + 'static {}

impl<F, T, A, R> SliceTaskFn<T, A, R> for F where F: Fn(&[T], A) -> R + Copy + Send + 'static {}
