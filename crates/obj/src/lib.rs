//! flowstate-obj
