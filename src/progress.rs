//! What long runs share with the person watching them: progress bars that stack (the study's
//! bar over the grid above a run's own bar) and a clean stop on Ctrl-C.
//!
//! Ctrl-C only raises a flag. Loops check it at safe points (after an optimizer step, between
//! sampling batches, after an update), write what they must and return [`Error::Interrupted`];
//! a second Ctrl-C exits at once.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STOP: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C request a clean stop (the first time) and exit (the second). Call once, from the
/// binary; a library user that never calls it keeps the default behaviour.
pub fn install_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| Error::Invalid(format!("cannot install the Ctrl-C handler: {e}")))
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Requests a stop, as Ctrl-C does (tests use it).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// `Err(Interrupted)` once a stop was requested.
pub fn check_stop() -> Result<()> {
    if stop_requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Every bar of the process draws through this, so nested bars stack instead of fighting.
fn bars() -> &'static indicatif::MultiProgress {
    static BARS: OnceLock<indicatif::MultiProgress> = OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

/// A bar of `total` steps, started at `position`, labelled `unit`.
pub fn bar(total: u64, position: u64, unit: &str) -> indicatif::ProgressBar {
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    if !crate::dist::is_main() {
        return indicatif::ProgressBar::hidden(); // one bar per run, rank 0's
    }
    let bar = indicatif::ProgressBar::new(total)
        .with_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_position(position);
    bars().add(bar)
}

/// Prints a line above the bars.
pub fn println(line: &str) {
    bars().suspend(|| eprintln!("{line}"));
}
