mod approvals;
mod auth;
mod console;
mod definitions;
mod events;
mod harness;
mod isolation;
mod records;
