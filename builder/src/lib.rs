//! `strata build`: Dockerfile builds whose steps run on lazily mounted parents and commit
//! each change as one layer in the native lazy format, with a build cache.

pub mod builder;
pub mod cache;
pub mod change;
pub mod config;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod fetch;
pub mod gofmt;
pub mod tarsum;
pub mod unpack;
pub mod words;

pub use builder::{BuildError, Builder, Event, Host, Options};
