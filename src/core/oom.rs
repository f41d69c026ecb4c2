//! OOM detection for a container cgroup (v1 and v2).
