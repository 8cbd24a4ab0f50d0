#[macro_use]
mod harness;
mod approvals;
mod auth;
mod client;
mod console;
mod definitions;
mod events;
mod isolation;
mod records;
mod store;
mod webhooks;
