pub mod support;

mod admin;
mod definitions;
mod escape;
mod run;
