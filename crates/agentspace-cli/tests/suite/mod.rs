pub mod support;

mod definitions;
mod escape;
mod run;
