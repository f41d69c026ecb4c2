//! Wire translation.
