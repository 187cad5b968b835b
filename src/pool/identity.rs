//! The identity a worker must share with its parent: same binary, same
//! protocol. It is the region's tag, so a mismatch fails at attach.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// A hash of this executable's file identity (device, inode, size), the
/// loky protocol version and the ipc layout version. A worker re-executed
/// from `/proc/self/exe` runs the very file its parent runs (which stays
/// alive, and cannot be written while it runs) and computes the same value;
/// any other binary does not. Not the modification time: a `touch` of the
/// running binary would make every later worker fail.
pub(crate) fn binary_tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(|| {
        let mut h = Fnv::default();
        match std::fs::metadata("/proc/self/exe") {
            Ok(m) => {
                for v in [m.dev(), m.ino(), m.size()] {
                    h.write(v);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot stat /proc/self/exe; binary identity is weaker")
            }
        }
        h.write(crate::protocol::PROTOCOL_VERSION);
        h.write(u64::from(loky_ipc::region::LAYOUT_VERSION));
        h.0
    })
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
