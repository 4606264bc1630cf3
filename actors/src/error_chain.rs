//! An error and its causes as one line, for the log line or the message an operator reads.
//!
//! An error type that crosses a module boundary keeps its cause as `#[source]` (thiserror) instead
//! of folding it into a string; whoever finally reports the error shows [`Chain`] of it:
//! `cannot prepare the Postgres schema: ERROR (55P03): canceling statement due to lock timeout`.
//!
//! Must not touch: what any error means or how it is classified.

use std::error::Error;
use std::fmt;

/// Shows `error`, then each of its sources in turn, separated by `: `. A source whose text the
/// line already holds (an error that writes its cause into its own message as well) is left out;
/// a Postgres error ends the line with [`crate::postgres::describe`] of it.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            // A Postgres error is shown as the service describes it (SQLSTATE, what a timeout
            // means), and that description is its whole chain.
            if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
                let text = crate::postgres::describe(pg);
                if !line.contains(&text) {
                    line.push_str(": ");
                    line.push_str(&text);
                }
                break;
            }
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot prepare the Postgres schema")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("connect: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("connection refused")));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot prepare the Postgres schema: connect: connection refused"
        );
        let plain = std::io::Error::other("plain");
        assert_eq!(Chain(&plain).to_string(), "plain");
    }
}
