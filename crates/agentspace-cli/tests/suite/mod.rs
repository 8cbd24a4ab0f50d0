pub mod support;

mod admin;
mod boundary;
mod control_plane;
mod definitions;
mod door;
mod escape;
mod run;
mod tools;
