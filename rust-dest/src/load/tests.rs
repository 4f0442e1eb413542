//! Loader tests driven from memory.
