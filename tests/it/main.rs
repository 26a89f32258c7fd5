//! Every integration test in one binary (one link instead of one per suite, and the suites
//! share the test threads): `cargo test --test it [FILTER]`, e.g. `cargo test --test it
//! imap_e2e::` for one suite. Each module is one suite; `support` is the shared harness.

mod support;

mod acme;
mod check;
mod cli;
mod directory;
mod e2e_smtp;
mod filter;
mod front_door;
mod guard;
mod harness_selftest;
mod imap;
mod imap_diff;
mod imap_dovecot;
mod imap_e2e;
mod install;
mod mailauth;
mod pop3;
mod queue;
mod smtp_session;
mod store;
mod web;
mod web_browser;
mod web_directory;
