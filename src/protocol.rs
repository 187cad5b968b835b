//! The messages exchanged over a worker's rings. Headers are `#[repr(C)]`
//! plain data read with `bytemuck` (length-checked, alignment-free), so a
//! malformed message is an error, not undefined behaviour. The layout
//! version is part of the region tag checked at attach.

use bytemuck::{Pod, Zeroable};

/// Parent → worker: run a task (`TaskHeader` + archived argument).
pub(crate) const TAG_TASK: u32 = 1;
/// Parent → worker: run the initializer (`TaskHeader` + archived argument).
pub(crate) const TAG_INIT: u32 = 2;
/// Parent → worker: finish the current task, then exit cleanly.
pub(crate) const TAG_EXIT: u32 = 3;

/// Worker → parent: the outcome of a task (`ResultHeader` + payload).
pub(crate) const TAG_RESULT: u32 = 10;
/// Worker → parent: the initializer ran; the worker takes tasks.
pub(crate) const TAG_READY: u32 = 11;

/// Precedes every task's archived argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct TaskHeader {
    /// Parent-assigned id, echoed in the result.
    pub(crate) task_id: u64,
    /// The trampoline's offset from the anchor (see `transport`).
    pub(crate) trampoline: i64,
}

/// Precedes every result payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct ResultHeader {
    pub(crate) task_id: u64,
    /// Wall time the worker spent on the task (decode, run, encode).
    pub(crate) elapsed_ns: u64,
    /// One of the `STATUS_*` values.
    pub(crate) status: u32,
    /// Resident set size of the worker after the task, in KiB.
    pub(crate) rss_kib: u32,
    pub(crate) _reserved: u64,
}

/// The payload is the archived result.
pub(crate) const STATUS_OK: u32 = 0;
/// The payload is an archived [`Failure`] from a panic.
pub(crate) const STATUS_PANIC: u32 = 1;
/// The payload is an archived [`Failure`] from a codec error.
pub(crate) const STATUS_DECODE_ARG: u32 = 2;
/// The payload is an archived [`Failure`] from a codec error.
pub(crate) const STATUS_ENCODE_RESULT: u32 = 3;
/// No payload: the parent withdrew the task before the worker started it
/// (its future failed already), and the worker skipped it.
pub(crate) const STATUS_SKIPPED: u32 = 4;

pub(crate) const TASK_HEADER: usize = std::mem::size_of::<TaskHeader>();
pub(crate) const RESULT_HEADER: usize = std::mem::size_of::<ResultHeader>();
const _: () = assert!(TASK_HEADER % 16 == 0 && RESULT_HEADER % 16 == 0);

/// What went wrong in a worker, as it travels back.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) location: String,
    pub(crate) backtrace: Option<String>,
}

/// Reads a `T` header from the front of `bytes`.
pub(crate) fn read_header<T: Pod>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let n = std::mem::size_of::<T>();
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    Some((bytemuck::pod_read_unaligned(head), rest))
}

/// Layout version of these messages, folded into the region tag.
pub(crate) const PROTOCOL_VERSION: u64 = 2;
