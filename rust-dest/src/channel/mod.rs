//! Incoming channels: accepting connections and classifying them
//! ([`listen`], [`session`]), the buffered reader ([`reader`], QEMU's
//! `migration/qemu-file.c` role) and the return-path writer
//! ([`return_path`]). Nothing here knows the loader.

pub mod fds;
pub mod listen;
pub mod reader;
pub mod return_path;
pub mod session;
pub mod uri;

pub use reader::{ReadError, Reader};
pub use return_path::{RecordingSink, ReturnPath};
pub use session::{Incoming, Session, Sock};
