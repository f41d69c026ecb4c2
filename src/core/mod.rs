//! Container registry, lifecycle, exit and OOM policy, runtime argv building.

pub mod oom;
