//! Checkpoint conversion.
