//! What an attempt learned about the model's code: static diagnostics and
//! test results. Stored on the attempt as JSON, served by
//! `GET /v1/jobs/{id}/attempts`, and fed back into the repair prompt.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails the attempt.
    Error,
    /// Reported to the model, does not fail the attempt.
    Warning,
    Info,
}

/// One finding about one place in one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the finding is about the file as a whole.
    pub line: u32,
    /// 1-based; 0 when the finding is about the line or file as a whole.
    pub col: u32,
    /// Stable identifier of the rule (`python-syntax`, `missing-file`, …).
    pub rule: String,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    /// A finding of any severity; [`Diagnostic::error`] and
    /// [`Diagnostic::warning`] are the common cases.
    pub fn new(
        severity: Severity,
        file: impl Into<String>,
        line: u32,
        col: u32,
        rule: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            ..Diagnostic::error(file, line, col, rule, message)
        }
    }

    pub fn error(file: impl Into<String>, line: u32, col: u32, rule: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            line,
            col,
            rule: rule.to_owned(),
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(file: impl Into<String>, line: u32, col: u32, rule: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, line, col, rule, message)
        }
    }

    /// `file:line:col` (omitting zeros).
    pub fn location(&self) -> String {
        match (self.line, self.col) {
            (0, _) => self.file.clone(),
            (line, 0) => format!("{}:{line}", self.file),
            (line, col) => format!("{}:{line}:{col}", self.file),
        }
    }
}

/// The static validation stage's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidationReport {
    /// True when no diagnostic is an error.
    pub ok: bool,
    pub diagnostics: Vec<Diagnostic>,
    /// Counts from the syntax tree (type-hint and docstring coverage, tests
    /// per endpoint), reported for information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<serde_json::Value>,
}

impl ValidationReport {
    pub fn from_diagnostics(diagnostics: Vec<Diagnostic>) -> ValidationReport {
        ValidationReport {
            ok: !diagnostics.iter().any(|d| d.severity == Severity::Error),
            diagnostics,
            quality: None,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    /// The test could not run to a verdict (crash, timeout, import error).
    Error,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One test's result, as established by the trusted side of the harness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestCaseResult {
    pub name: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The sandbox stage's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestReport {
    pub passed: u32,
    pub failed: u32,
    pub total: u32,
    pub cases: Vec<TestCaseResult>,
    /// What the code under test printed (capped).
    pub output: String,
    /// Why the run as a whole failed, when it did (timeout, import error,
    /// fewer tests ran than expected, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl TestReport {
    /// Builds a report from cases; `expected` is how many tests must have run.
    pub fn from_cases(
        cases: Vec<TestCaseResult>,
        expected: usize,
        output: String,
        problem: Option<String>,
    ) -> TestReport {
        let passed = cases.iter().filter(|c| c.outcome == Outcome::Passed).count() as u32;
        let mut problem = problem;
        if problem.is_none() && cases.len() < expected {
            problem = Some(format!("only {} of {expected} expected tests ran", cases.len()));
        }
        let total = cases.len().max(expected) as u32;
        TestReport {
            passed,
            failed: total - passed,
            total,
            cases,
            output,
            problem,
        }
    }

    /// Passing means: no problem, at least one test, every expected test ran
    /// and passed (skips count as not passed).
    pub fn all_passed(&self) -> bool {
        self.problem.is_none() && self.total > 0 && self.passed == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(outcome: Outcome) -> TestCaseResult {
        TestCaseResult {
            name: "t".into(),
            outcome,
            message: String::new(),
        }
    }

    #[test]
    fn a_report_with_missing_tests_does_not_pass() {
        let r = TestReport::from_cases(vec![case(Outcome::Passed)], 2, String::new(), None);
        assert!(!r.all_passed());
        assert_eq!((r.passed, r.failed, r.total), (1, 1, 2));
        assert!(r.problem.unwrap().contains("only 1 of 2"));
    }

    #[test]
    fn an_empty_report_does_not_pass() {
        assert!(!TestReport::from_cases(vec![], 0, String::new(), None).all_passed());
    }

    #[test]
    fn skipped_tests_are_not_passes() {
        let r = TestReport::from_cases(
            vec![case(Outcome::Passed), case(Outcome::Skipped)],
            2,
            String::new(),
            None,
        );
        assert!(!r.all_passed());
    }
}
