//! Resumable streams (seed 003), served by one event loop.

pub mod book;
pub mod hub;
