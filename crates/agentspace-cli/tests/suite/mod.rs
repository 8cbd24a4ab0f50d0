pub mod support;

mod admin;
mod approvals;
mod boundary;
mod console;
mod control_plane;
mod definitions;
mod door;
mod escape;
mod remote;
mod run;
mod tools;
