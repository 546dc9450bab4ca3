//! Progress display for pull and convert: a bar per layer on a terminal, a line per finished
//! layer always (as docker prints them).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_image::Progress;
use strata_oci::Digest;

/// Shows [`Progress`] events.
pub struct Display {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    quiet: bool,
    to_stderr: bool,
}

impl Display {
    /// A display; `quiet` prints nothing.
    pub fn new(quiet: bool) -> Self {
        let target = if std::io::stderr().is_terminal() && !quiet {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            quiet,
            to_stderr: false,
        }
    }

    /// A display whose lines go to standard error (an implicit pull before `run`, like docker's).
    pub fn on_stderr() -> Self {
        Self {
            to_stderr: true,
            ..Self::new(false)
        }
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            if self.to_stderr {
                eprintln!("{s}");
            } else {
                println!("{s}");
            }
        } else {
            let _ = self.multi.println(s);
        }
    }

    /// Handles one event.
    pub fn event(&self, p: Progress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            // docker prints the digest after the layers (the pull prints it at the end).
            Progress::Resolved { manifest, layers } => {
                tracing::info!("{manifest}: {layers} layers");
            }
            Progress::LayerStart { layer, size, what } => {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(layer.short());
                bar.set_message(what);
                bars.insert(layer, bar);
            }
            Progress::LayerBytes { layer, done } => {
                if let Some(b) = bars.get(&layer) {
                    b.set_position(done);
                }
            }
            Progress::Mounted { layer, from } => {
                if let Some(b) = bars.remove(&layer) {
                    b.finish_and_clear();
                }
                self.line(&format!("{}: Mounted from {from}", layer.short()));
            }
            Progress::LayerDone { layer, what } => {
                if let Some(b) = bars.remove(&layer) {
                    b.finish_and_clear();
                }
                // As docker's: a line per layer fetched, none for one the store has; how
                // strata will read the layer (lazily by its TOC, or streamed) is logged.
                tracing::info!("{}: {what}", layer.short());
                if what != "Already exists" {
                    let shown = what.split(" (").next().unwrap_or(what).to_string();
                    self.line(&format!("{}: {shown}", layer.short()));
                }
            }
        }
    }
}
