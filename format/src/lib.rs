//! The lowbit file format.
