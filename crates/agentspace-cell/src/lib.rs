//! The cell (in progress).
