//! Many sequences at once over one shared model: requests, the continuous-batching scheduler
//! and stop strings. The HTTP server, `lowbit batch` and the Python binding all drive this.

pub mod outcome;
mod request;
mod scheduler;
mod stop;

pub use outcome::{Choice, Outcome};
pub use request::{AdapterChoice, Event, FinishReason, Request, TokenLogprob, Usage};
pub use scheduler::{BatchOptions, Handle, Metrics, Scheduler, Sink, SubmitError, MAX_TOP_LOGPROBS};
pub use stop::StopText;
