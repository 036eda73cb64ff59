//! gnno-train
