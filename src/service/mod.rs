//! The service layer: what a connection means, between the I/O backends (`server`) and the
//! domain (`sequence`, `lease`, `stream`, `state`, `store`). A backend hands a session the
//! bytes it received and sends the bytes the session produced; everything in between lives
//! here: framing ([`session`]), serving requests ([`executor`], [`lease_requests`]), turning
//! domain outcomes into wire replies ([`replies`]) and the stream protocol ([`stream_hub`]).

pub mod auth;
pub mod counters;
pub mod executor;
mod lease_requests;
pub mod replies;
pub mod session;
pub mod stream_hub;
#[cfg(test)]
mod tests;

pub use executor::{Limits, LoopState};
pub use session::{OUTPUT_HIGH_WATER, Pause, Session, Status};
