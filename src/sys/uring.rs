//! Safe io_uring wrapper used by the engine (filled in by the engine implementation).
