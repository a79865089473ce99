//! Fixed-window rate limiting as a Tower layer (in progress).
#![warn(missing_docs)]
