pub mod support;

mod admin;
mod boundary;
mod definitions;
mod escape;
mod run;
