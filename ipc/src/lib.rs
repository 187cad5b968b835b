//! loky-ipc
