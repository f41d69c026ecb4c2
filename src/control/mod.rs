//! capnp server.
