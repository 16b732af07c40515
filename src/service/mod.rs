//! The service layer: what a connection means, between the I/O backends (`server`) and the
//! domain (`sequence`, `lease`, `stream`, `store`). A backend hands a session the bytes it
//! received and sends the bytes the session produced; everything in between lives here.

pub mod replies;
pub mod session;
pub mod stream_hub;

pub use session::{Limits, LoopState, Pause, Session, Status};
