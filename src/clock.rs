//! Wall-clock time as the server records it: nanoseconds since the Unix
//! epoch, UTC.

use crate::domain::UnixNanos;

/// Wall-clock time now, in nanoseconds since the Unix epoch (0 before it).
pub(crate) fn now_nanos() -> UnixNanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
