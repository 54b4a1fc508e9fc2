//! Which of fal's failures let a model's chain try its next endpoint
//! ([`Fallback`]), decided from the answer itself, beside the one
//! classification of what the client is told ([`super::errors::classify`]).
//! Every place a failing fal answer is classified goes through [`classify`]
//! here, and a transport failure through [`call_error`].
//!
//! - 404 or 410 to a submit (or sync run): the endpoint is gone.
//! - 429, after the call's retries: no capacity.
//! - 504 with `X-Fal-Request-Timeout-Type: user`: the job did not start
//!   within the start timeout the gateway sent.
//! - any other 5xx to a submit, a sync run or a result (a job that failed
//!   on fal's side, unbilled), or fal unreachable, after retries: failing.
//!
//! Never: 4xx other than these (the client's own request, content policy),
//! a paid call whose outcome is unknown (falling back would pay twice),
//! malformed answers, or a stop (cancel, deadline).

use super::errors;
use super::transport::{Answer, CallError, Operation};
use crate::backend::JobContext;
use crate::error::{ApiError, Fallback};

/// The reason a failing answer lets the chain move on, if it does.
pub fn reason(op: Operation, answer: &Answer) -> Option<Fallback> {
    let status = answer.status.as_u16();
    let start_timeout = status == 504
        && answer
            .headers
            .get("x-fal-request-timeout-type")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user"));
    // While a job is queued or running (status, stream) it may still make
    // images and be billed: a failing watch never moves the chain on; nor
    // does anything after a job made its images (downloads) or a cancel.
    if !matches!(op, Operation::Submit | Operation::Run | Operation::Result) {
        return None;
    }
    match status {
        404 | 410 if matches!(op, Operation::Submit | Operation::Run) => Some(Fallback::Gone),
        429 => Some(Fallback::Capacity),
        504 if start_timeout => Some(Fallback::StartTimeout),
        500..=599 => Some(Fallback::Failing),
        _ => None,
    }
}

/// The client's error for a failing answer, marked when the chain may move
/// on.
pub fn classify(op: Operation, answer: &Answer) -> ApiError {
    let error = errors::classify(op, answer);
    match reason(op, answer) {
        Some(reason) => error.unavailable(reason),
        None => error,
    }
}

/// The client's error for a call that got no answer; a submit that could not
/// reach fal (after retries) lets the chain move on. Nothing else does: a
/// sync run, a watched job or a result may be running or billed already.
pub fn call_error(op: Operation, e: CallError, ctx: &JobContext) -> ApiError {
    let unreachable = matches!(e, CallError::Transport(_)) && op == Operation::Submit;
    let error = errors::call_error(e, ctx);
    if unreachable {
        error.unavailable(Fallback::Failing)
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> Answer {
        super::super::transport::answer(status, headers, r#"{"detail":"x"}"#)
    }

    #[test]
    fn only_what_another_endpoint_may_not_share_moves_the_chain_on() {
        use Operation::*;
        let table = [
            (Submit, answer(404, &[]), Some(Fallback::Gone)),
            (Submit, answer(410, &[]), Some(Fallback::Gone)),
            (Run, answer(410, &[]), Some(Fallback::Gone)),
            // A request id fal does not know is not a missing endpoint.
            (Status, answer(404, &[]), None),
            (Result, answer(404, &[]), None),
            (Status, answer(503, &[]), None),
            (Stream, answer(502, &[]), None),
            (Download, answer(500, &[]), None),
            (Submit, answer(429, &[]), Some(Fallback::Capacity)),
            (
                Submit,
                answer(503, &[("x-fal-error-type", "runner_scheduling_failure")]),
                Some(Fallback::Failing),
            ),
            (Result, answer(500, &[]), Some(Fallback::Failing)),
            (
                Result,
                answer(504, &[("x-fal-request-timeout-type", "user")]),
                Some(Fallback::StartTimeout),
            ),
            (Submit, answer(422, &[]), None),
            (Submit, answer(400, &[]), None),
            (Submit, answer(401, &[]), None),
        ];
        for (op, a, expected) in table {
            assert_eq!(reason(op, &a), expected, "{op:?} {}", a.status);
            assert_eq!(classify(op, &a).fallback(), expected);
        }
    }
}
