//! The progress bar of `kiln submit --wait` and `kiln status --watch` on a
//! terminal: two lines redrawn in place (indicatif) with the share of jobs
//! ended, the counts by state, the rate of jobs ending, the time left at
//! that rate, the time followed, tokens and cost.
//!
//! Only when standard output and standard error are both terminals and the
//! output is text: a redirected or piped run keeps its plain line per
//! change, which logs and scripts read, and no escape code is written.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A batch's progress as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    pub total: u64,
    pub queued: u64,
    pub running: u64,
    pub awaiting_review: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Absent when no attempt's model has a price.
    pub cost_usd: Option<f64>,
}

impl Snapshot {
    /// Jobs with nothing left to run: ended, or passed and awaiting a
    /// person's review.
    pub fn settled(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled + self.awaiting_review
    }
}

/// The redrawn bar, on standard error.
pub struct Bar {
    line: ProgressBar,
    /// When following began, and how many jobs had settled then: the rate
    /// counts only what was seen to settle, so following a half-done batch
    /// does not report its earlier work as done in a second.
    started: Instant,
    settled_at_start: Option<u64>,
}

impl Bar {
    /// A bar when both standard output and standard error are terminals.
    pub fn on_terminal() -> Option<Bar> {
        if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
            return None;
        }
        // Hidden until the first update has set every field: a bar drawn
        // before knowing the total would show 0/0 as 100%.
        let bar = ProgressBar::hidden();
        // Two lines, each within 80 columns for batches of thousands:
        // the bar and the pace, then the counts, tokens and cost (cut
        // short rather than wrapped on a narrower terminal).
        bar.set_style(
            ProgressStyle::with_template("{bar:24.green/blue} {percent:>3}% {pos}/{len} · {prefix}\n{wide_msg}")
                .expect("the template is valid")
                .progress_chars("█▓░"),
        );
        Some(Bar {
            line: bar,
            started: Instant::now(),
            settled_at_start: None,
        })
    }

    /// Redraws the bar for `s`.
    pub fn update(&mut self, s: &Snapshot) {
        let start = *self.settled_at_start.get_or_insert(s.settled());
        // The text first: moving the bar redraws it.
        self.line.set_prefix(pace(s, start, self.started.elapsed()));
        self.line.set_message(counts(s));
        self.line.set_length(s.total);
        self.line.set_position(s.settled());
        if self.line.is_hidden() {
            self.line.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// Leaves the bar drawn as it ended and prints `line` on standard output.
    pub fn finish(self, line: &str) {
        self.line.finish();
        println!("{line}");
    }
}

/// The rate of jobs settling, the time left at that rate and the time
/// followed. `settled_at_start` jobs had settled when following began,
/// `elapsed` ago.
pub fn pace(s: &Snapshot, settled_at_start: u64, elapsed: Duration) -> String {
    let seen = s.settled().saturating_sub(settled_at_start) as f64;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { seen / secs } else { 0.0 };
    let left = s.total.saturating_sub(s.settled());
    let eta = match (left, rate > 0.0) {
        (0, _) => "0s".to_owned(),
        (_, true) => clock(Duration::from_secs_f64(left as f64 / rate)),
        (_, false) => "-".to_owned(),
    };
    format!("{rate:.2} jobs/s · ETA {eta} · elapsed {}", clock(elapsed))
}

/// The jobs by state (succeeded and failed always, the others when there
/// are some), tokens and cost.
pub fn counts(s: &Snapshot) -> String {
    let states = [
        ("queued", s.queued, false),
        ("running", s.running, false),
        ("awaiting review", s.awaiting_review, false),
        ("succeeded", s.succeeded, true),
        ("failed", s.failed, true),
        ("cancelled", s.cancelled, false),
    ];
    let shown: Vec<String> = states
        .iter()
        .filter(|&&(_, n, always)| always || n > 0)
        .map(|(name, n, _)| format!("{n} {name}"))
        .collect();
    let mut out = format!(
        "{} · tokens {} in / {} out",
        shown.join(", "),
        s.prompt_tokens,
        s.completion_tokens
    );
    if let Some(cost) = s.cost_usd {
        let _ = write!(out, " · ${cost:.4}");
    }
    out
}

/// `42s`, `3m05s` or `1h02m`.
fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_of_the_jobs_seen_to_settle_while_following() {
        let s = Snapshot {
            total: 40,
            queued: 10,
            running: 4,
            succeeded: 20,
            failed: 6,
            ..Snapshot::default()
        };
        // 16 settled while following for 8 s: 2 jobs/s, 14 left, 7 s.
        assert_eq!(
            pace(&s, 10, Duration::from_secs(8)),
            "2.00 jobs/s · ETA 7s · elapsed 8s"
        );
        assert_eq!(
            pace(&s, 26, Duration::from_secs(125)),
            "0.00 jobs/s · ETA - · elapsed 2m05s"
        );
    }

    #[test]
    fn the_counts_name_the_states_that_have_jobs_with_tokens_and_cost() {
        let s = Snapshot {
            total: 40,
            running: 4,
            succeeded: 30,
            cancelled: 6,
            prompt_tokens: 1200,
            completion_tokens: 300,
            cost_usd: Some(0.0123),
            ..Snapshot::default()
        };
        assert_eq!(
            counts(&s),
            "4 running, 30 succeeded, 0 failed, 6 cancelled · tokens 1200 in / 300 out · $0.0123"
        );
        let unpriced = Snapshot {
            total: 3,
            queued: 3,
            ..Snapshot::default()
        };
        assert_eq!(
            counts(&unpriced),
            "3 queued, 0 succeeded, 0 failed · tokens 0 in / 0 out"
        );
    }
}
