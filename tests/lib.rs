//! Shared support for Airlock's end-to-end tests (in `tests/*.rs` of this
//! package): locating guest images and QEMU, and skipping with a clear
//! message where they are missing.
