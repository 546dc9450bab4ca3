//! A container's root filesystem: the image's lazy read-only mount as the lower directory of a
//! kernel overlayfs with a private writable upper.

pub mod root;
pub mod union;
