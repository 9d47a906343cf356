//! flowstate-capture
