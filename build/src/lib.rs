//! `strata build`: Dockerfile builds whose steps run on lazily mounted parents and commit
//! each change as one layer in the native lazy format, with a build cache.

pub mod dockerfile;
pub mod words;
