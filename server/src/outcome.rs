//! A request's events gathered into its result (non-streaming answers), turned into an SSE
//! stream (streaming ones), and the one log line each request gets.

use crate::app::Pending;
use crate::error::ApiError;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lowbit_runtime::batch::{Event, Outcome, Usage};
use std::collections::VecDeque;
use std::convert::Infallible;

/// Waits for every event of a request with `n` completions.
pub async fn collect(mut p: Pending, n: usize) -> Result<Outcome, ApiError> {
    let mut out = Outcome::new(n);
    while let Some(e) = p.rx.recv().await {
        if out.push(e).map_err(ApiError::internal)? {
            return Ok(out);
        }
    }
    Err(ApiError::internal("the scheduler stopped before the request finished"))
}

/// The log line of a finished request: id, endpoint, token counts and times.
pub fn log_line(id: &str, endpoint: &str, u: &Usage) {
    let decode = u.total.saturating_sub(u.time_to_first_token).as_secs_f64();
    let tps = if u.completion_tokens > 1 && decode > 0.0 { (u.completion_tokens - 1) as f64 / decode } else { 0.0 };
    eprintln!(
        "{id} {endpoint}: prompt {} tokens, generated {}, queued {:.0} ms, first token {:.0} ms, {tps:.1} tok/s, total {:.0} ms",
        u.prompt_tokens,
        u.completion_tokens,
        u.queued.as_secs_f64() * 1e3,
        u.time_to_first_token.as_secs_f64() * 1e3,
        u.total.as_secs_f64() * 1e3
    );
}

/// What a streamed event becomes: SSE data lines, and whether the stream ends after them.
pub type Translate = Box<dyn FnMut(Event) -> (Vec<String>, bool) + Send>;

/// Streams a request as server-sent events: `translate` turns each scheduler event into
/// `data:` payloads; `[DONE]` closes the stream when `done` (OpenAI's endpoints). Dropping the
/// stream (a client that went away) drops the [`Pending`], which cancels the request and frees
/// its slot.
pub fn sse(first: Vec<String>, rx: Pending, translate: Translate, done: bool) -> Response {
    struct State {
        rx: Pending,
        queue: VecDeque<String>,
        ended: bool,
        translate: Translate,
    }
    let state = State { rx, queue: first.into(), ended: false, translate };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(data) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            let (items, end) = match s.rx.rx.recv().await {
                Some(e) => (s.translate)(e),
                None => (vec![ApiError::internal("the scheduler stopped").body().to_string()], true),
            };
            s.queue.extend(items);
            if end {
                if done {
                    s.queue.push_back("[DONE]".into());
                }
                s.ended = true;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
