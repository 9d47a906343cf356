//! flowstate-viz
