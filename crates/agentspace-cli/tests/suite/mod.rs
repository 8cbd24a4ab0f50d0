pub mod support;

mod admin;
mod boundary;
mod definitions;
mod door;
mod escape;
mod run;
mod tools;
