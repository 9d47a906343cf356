//! flowstate-interp
