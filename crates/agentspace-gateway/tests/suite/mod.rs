mod attacks;
mod broker;
mod e2e;
mod helpers;
mod mcp;
