//! flowstate-asm
