//! The only place with syscalls and `unsafe`. Every `unsafe` block carries a
//! `// SAFETY:` comment; everything exported here is a safe API.

pub mod fd;
pub mod fs;
pub mod limits;
pub mod namespace;
pub mod process;
pub mod random;
pub mod reactor;
pub mod seccomp;
pub mod shm;
pub mod socket;
pub mod stats;
pub mod time;
pub mod tty;
pub mod uring;
