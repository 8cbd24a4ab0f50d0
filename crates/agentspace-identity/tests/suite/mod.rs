mod call_tokens;
mod delegation;
mod interop;
mod keys;
mod mint_verify;
mod props;
mod replay;
mod support;
