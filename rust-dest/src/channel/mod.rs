//! Incoming channels: accepting connections and classifying them
//! ([`listen`], [`session`]), the buffered reader ([`reader`], QEMU's
//! `migration/qemu-file.c` role) and the return-path writer
//! ([`return_path`]); the transports' URIs ([`uri`]), descriptors passed
//! over QMP ([`fds`]) and the file of a `file:` migration ([`file`]:
//! [`IncomingFile`], reachable with `Session::incoming_file`). Nothing here
//! knows the loader.

pub mod fds;
pub mod file;
pub mod listen;
pub mod reader;
pub mod return_path;
pub mod session;
pub mod uri;

pub use file::IncomingFile;
pub use reader::{ReadError, Reader};
pub use return_path::{RecordingSink, ReturnPath};
pub use session::{Incoming, Session, Sock};
