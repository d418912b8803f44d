//! Reading vitest's JSON report (`--reporter=json`) into test counts and the
//! names of failing tests.
//!
//! The report follows Jest's layout: `testResults` holds one entry per test
//! file with a `status`, a `message` (set when the file itself failed, e.g.
//! on an import error) and `assertionResults`, one per test, each with a
//! `status` and a `fullName`.

use anyhow::{Context, Result};

use crate::json::{self, Value};

/// Counts and failures of one vitest run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Tests that passed.
    pub(crate) passed: u64,
    /// Tests that failed, plus test files that failed outside any test.
    pub(crate) failed: u64,
    /// Tests skipped, pending or marked todo.
    pub(crate) skipped: u64,
    /// One line per failure: the test's full name and the first line of its message.
    pub(crate) failures: Vec<String>,
    /// Passed and failed counts per test file, in report order.
    pub(crate) per_file: Vec<(String, u64, u64)>,
}

/// Parses the text of a vitest JSON report.
pub(crate) fn parse_report(text: &str) -> Result<Report> {
    let doc = json::parse(text).context("parsing the vitest JSON report")?;
    let files = doc
        .get("testResults")
        .and_then(Value::as_array)
        .context("vitest JSON report has no testResults array")?;

    let mut report = Report::default();
    for file in files {
        let file_name = file.get("name").and_then(Value::as_str).unwrap_or("?");
        let tests = file
            .get("assertionResults")
            .and_then(Value::as_array)
            .unwrap_or_default();
        let mut failed_in_file = 0;
        let passed_before = report.passed;
        for test in tests {
            let name = test
                .get("fullName")
                .and_then(Value::as_str)
                .unwrap_or("(unnamed test)");
            match test.get("status").and_then(Value::as_str) {
                Some("passed") => report.passed += 1,
                Some("failed") => {
                    failed_in_file += 1;
                    let message = test
                        .get("failureMessages")
                        .and_then(Value::as_array)
                        .and_then(<[Value]>::first)
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    report
                        .failures
                        .push(describe(short_file(file_name), name, message));
                }
                Some("skipped" | "pending" | "todo" | "disabled") => report.skipped += 1,
                other => {
                    failed_in_file += 1;
                    let status = other.unwrap_or("missing");
                    report.failures.push(describe(
                        short_file(file_name),
                        name,
                        &format!("unexpected test status {status:?}"),
                    ));
                }
            }
        }
        report.failed += failed_in_file;
        report.per_file.push((
            short_file(file_name).to_owned(),
            report.passed - passed_before,
            failed_in_file,
        ));

        // A file can fail without any failing test (import error, error in a
        // hook, unhandled rejection): count it once so it cannot go unnoticed.
        let file_failed = file.get("status").and_then(Value::as_str) == Some("failed");
        if file_failed && failed_in_file == 0 {
            let message = file.get("message").and_then(Value::as_str).unwrap_or("");
            report.failed += 1;
            report.failures.push(describe(
                short_file(file_name),
                "(test file failed outside any test)",
                message,
            ));
        }
    }
    Ok(report)
}

/// The file name without its directory, as vitest prints it.
fn short_file(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// `file > full name: first line of message`.
fn describe(file: &str, name: &str, message: &str) -> String {
    let first_line = message.lines().map(str::trim).find(|l| !l.is_empty());
    match first_line {
        Some(line) => format!("{file} > {name}: {line}"),
        None => format!("{file} > {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_report;

    #[test]
    fn counts_tests_and_names_failures() {
        let report = parse_report(
            r#"{
              "numTotalTests": 4,
              "testResults": [
                {
                  "name": "/x/conformance/conformance.test.mjs",
                  "status": "failed",
                  "message": "",
                  "assertionResults": [
                    {"fullName": "A > passes", "status": "passed", "failureMessages": []},
                    {"fullName": "A > fails", "status": "failed",
                     "failureMessages": ["AssertionError: expected 1 to be 2\n    at foo"]},
                    {"fullName": "B > skipped", "status": "skipped", "failureMessages": []},
                    {"fullName": "B > todo", "status": "todo", "failureMessages": []}
                  ]
                },
                {
                  "name": "/x/conformance/client.test.mjs",
                  "status": "passed",
                  "message": "",
                  "assertionResults": [
                    {"fullName": "C > works", "status": "passed", "failureMessages": []}
                  ]
                }
              ]
            }"#,
        )
        .expect("valid report");
        assert_eq!(report.passed, 2);
        assert_eq!(report.failed, 1);
        assert_eq!(report.skipped, 2);
        assert_eq!(
            report.failures,
            ["conformance.test.mjs > A > fails: AssertionError: expected 1 to be 2"]
        );
    }

    #[test]
    fn counts_a_file_that_failed_outside_tests() {
        let report = parse_report(
            r#"{"testResults": [{"name": "/x/client.test.mjs", "status": "failed",
                "message": "Error: DS_BASE_URL is required", "assertionResults": []}]}"#,
        )
        .expect("valid report");
        assert_eq!(report.failed, 1);
        assert_eq!(
            report.failures,
            [
                "client.test.mjs > (test file failed outside any test): Error: DS_BASE_URL is required"
            ]
        );
    }

    #[test]
    fn rejects_reports_without_results() {
        assert!(parse_report("{}").is_err());
        assert!(parse_report("not json").is_err());
    }
}
