//! posthaste: a turnkey mail server. The binary in `main.rs` is a thin CLI over these modules.

pub mod address;
pub mod config;
pub mod directory;
pub mod queue;
pub mod store;
