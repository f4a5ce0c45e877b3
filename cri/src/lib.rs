//! berth-cri (skeleton).
