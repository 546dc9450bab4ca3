//! The last read a filesystem could not serve, kept to tell a user why a program saw EIO.

/// The last read that failed: when (seconds since the epoch) and why (the error and its
/// causes on one line), for whoever must tell a user why a program saw EIO.
#[derive(Debug, Default)]
pub struct LastFailure(std::sync::Mutex<Option<(i64, String)>>);

impl LastFailure {
    pub(crate) fn note(&self, why: String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, why));
    }

    /// The last failure, if there was one.
    pub fn last(&self) -> Option<(i64, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
