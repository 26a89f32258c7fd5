//! posthaste: a turnkey mail server. The binary in `main.rs` is a thin CLI over these modules.

pub mod address;
pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod directory;
pub mod dns;
pub mod durable;
pub mod endpoint;
pub mod filter;
pub mod guard;
pub mod header;
pub mod hostname;
pub mod imap;
pub mod install;
pub mod layered_toml;
pub mod mailauth;
pub mod net;
pub mod pop3;
pub mod queue;
pub mod sasl;
pub mod serve;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod web;
