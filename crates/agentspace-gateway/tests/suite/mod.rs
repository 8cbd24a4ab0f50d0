mod attacks;
mod e2e;
mod helpers;
