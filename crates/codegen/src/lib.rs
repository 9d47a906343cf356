//! flowstate-codegen
