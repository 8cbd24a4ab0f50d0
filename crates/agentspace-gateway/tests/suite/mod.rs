mod attacks;
mod broker;
mod e2e;
mod helpers;
mod internal;
mod mcp;
mod passthrough;
mod sigv4;
