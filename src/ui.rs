//! The one place that writes to stderr: status lines, warnings and progress bars.
//!
//! Results go to stdout and are written by the binary, not here. Progress bars draw only on a
//! terminal and never when quiet; status lines are printed above any bar that is drawing, so
//! the two never interleave.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Ui {
    quiet: bool,
    verbose: bool,
    bars: MultiProgress,
}

impl Ui {
    pub fn new(quiet: bool, verbose: bool) -> Ui {
        let target =
            if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Ui { quiet, verbose, bars: MultiProgress::with_draw_target(target) }
    }

    /// A step the user may want to follow; hidden by `--quiet`.
    pub fn status(&self, message: impl AsRef<str>) {
        if !self.quiet {
            self.print(message.as_ref());
        }
    }

    /// Why a decision was taken; shown with `--verbose`.
    pub fn debug(&self, message: impl AsRef<str>) {
        if self.verbose && !self.quiet {
            self.print(&format!("debug: {}", message.as_ref()));
        }
    }

    /// Something the user should act on; shown even with `--quiet`.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.print(&format!("warning: {}", message.as_ref()));
    }

    fn print(&self, line: &str) {
        self.bars.suspend(|| eprintln!("{line}"));
    }

    /// A bar counting `total` items, labelled with `what`. Finish it with
    /// [`ProgressBar::finish_and_clear`].
    pub fn bar(&self, total: u64, what: &str) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}
