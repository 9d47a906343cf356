//! flowstate-runtime
