mod approvals;
mod auth;
mod definitions;
mod events;
mod harness;
mod isolation;
mod records;
