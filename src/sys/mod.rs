//! The only place with syscalls and `unsafe`. Every `unsafe` block carries a
//! `// SAFETY:` comment; everything exported here is a safe API.

pub mod time;
pub mod uring;
