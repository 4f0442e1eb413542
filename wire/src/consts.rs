//! Wire constants, with the values they have on the wire and QEMU's names (so a
//! grep finds both sides).
//!
//! - Stream: `QEMU_VM_FILE_MAGIC` ("QEVM"), `QEMU_VM_FILE_VERSION` (3) and the
//!   one-byte record types `QEMU_VM_*` (`migration/savevm.h`).
//! - Commands: `MIG_CMD_*`, with [`command_name`] and [`command_fixed_len`]
//!   mirroring QEMU's length table (`migration/savevm.c: mig_cmd_args[]`).
//! - RAM record flags: `RAM_SAVE_FLAG_*`, the low bits of each record's
//!   address word (`migration/ram.h`; `migration/ram.c` in 7.2).
//! - Return path: `MIG_RP_MSG_*` (`migration/migration.c: rp_cmd_args[]`),
//!   the RESUME_ACK value and the received-bitmap end marker.
//!
//! `MIG_CMD_MAX` and `MIG_RP_MSG_MAX` are the 10.0/11.1 values (12 and 8); a
//! 7.2 peer knows one fewer of each. Tables with every value and when it is
//! legal: `docs/wire-format.md`, sections 6, 7 and 9.

pub const QEMU_VM_FILE_MAGIC: u32 = 0x5145_564d;
pub const QEMU_VM_FILE_VERSION_COMPAT: u32 = 2;
pub const QEMU_VM_FILE_VERSION: u32 = 3;

pub const QEMU_VM_EOF: u8 = 0x00;
pub const QEMU_VM_SECTION_START: u8 = 0x01;
pub const QEMU_VM_SECTION_PART: u8 = 0x02;
pub const QEMU_VM_SECTION_END: u8 = 0x03;
pub const QEMU_VM_SECTION_FULL: u8 = 0x04;
pub const QEMU_VM_SUBSECTION: u8 = 0x05;
pub const QEMU_VM_VMDESCRIPTION: u8 = 0x06;
pub const QEMU_VM_CONFIGURATION: u8 = 0x07;
pub const QEMU_VM_COMMAND: u8 = 0x08;
pub const QEMU_VM_SECTION_FOOTER: u8 = 0x7e;

/// PING value sent inside the package just before RUN (10.2+ sources).
pub const PING_PACKAGED_LOADED: u32 = 0x42;

// MIG_CMD_*
pub const MIG_CMD_INVALID: u16 = 0;
pub const MIG_CMD_OPEN_RETURN_PATH: u16 = 1;
pub const MIG_CMD_PING: u16 = 2;
pub const MIG_CMD_POSTCOPY_ADVISE: u16 = 3;
pub const MIG_CMD_POSTCOPY_LISTEN: u16 = 4;
pub const MIG_CMD_POSTCOPY_RUN: u16 = 5;
pub const MIG_CMD_POSTCOPY_RAM_DISCARD: u16 = 6;
pub const MIG_CMD_PACKAGED: u16 = 7;
pub const MIG_CMD_ENABLE_COLO: u16 = 8;
pub const MIG_CMD_POSTCOPY_RESUME: u16 = 9;
pub const MIG_CMD_RECV_BITMAP: u16 = 10;
pub const MIG_CMD_SWITCHOVER_START: u16 = 11;
/// One past the highest command we know (10.x: 12).
pub const MIG_CMD_MAX: u16 = 12;

pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        MIG_CMD_INVALID => "INVALID",
        MIG_CMD_OPEN_RETURN_PATH => "OPEN_RETURN_PATH",
        MIG_CMD_PING => "PING",
        MIG_CMD_POSTCOPY_ADVISE => "POSTCOPY_ADVISE",
        MIG_CMD_POSTCOPY_LISTEN => "POSTCOPY_LISTEN",
        MIG_CMD_POSTCOPY_RUN => "POSTCOPY_RUN",
        MIG_CMD_POSTCOPY_RAM_DISCARD => "POSTCOPY_RAM_DISCARD",
        MIG_CMD_PACKAGED => "PACKAGED",
        MIG_CMD_ENABLE_COLO => "ENABLE_COLO",
        MIG_CMD_POSTCOPY_RESUME => "POSTCOPY_RESUME",
        MIG_CMD_RECV_BITMAP => "RECV_BITMAP",
        MIG_CMD_SWITCHOVER_START => "SWITCHOVER_START",
        _ => "UNKNOWN",
    }
}

/// Fixed payload length of a command, or None when variable.
pub fn command_fixed_len(cmd: u16) -> Option<u16> {
    match cmd {
        MIG_CMD_OPEN_RETURN_PATH => Some(0),
        MIG_CMD_PING => Some(4),
        MIG_CMD_POSTCOPY_LISTEN => Some(0),
        MIG_CMD_POSTCOPY_RUN => Some(0),
        MIG_CMD_PACKAGED => Some(4),
        MIG_CMD_ENABLE_COLO => Some(0),
        MIG_CMD_POSTCOPY_RESUME => Some(0),
        MIG_CMD_SWITCHOVER_START => Some(0),
        _ => None,
    }
}

// RAM_SAVE_FLAG_*
pub const RAM_SAVE_FLAG_FULL: u64 = 0x001;
pub const RAM_SAVE_FLAG_ZERO: u64 = 0x002;
pub const RAM_SAVE_FLAG_MEM_SIZE: u64 = 0x004;
pub const RAM_SAVE_FLAG_PAGE: u64 = 0x008;
pub const RAM_SAVE_FLAG_EOS: u64 = 0x010;
pub const RAM_SAVE_FLAG_CONTINUE: u64 = 0x020;
pub const RAM_SAVE_FLAG_XBZRLE: u64 = 0x040;
pub const RAM_SAVE_FLAG_HOOK: u64 = 0x080;
pub const RAM_SAVE_FLAG_COMPRESS_PAGE: u64 = 0x100;
pub const RAM_SAVE_FLAG_MULTIFD_FLUSH: u64 = 0x200;

/// XBZRLE encoding marker byte.
pub const ENCODING_FLAG_XBZRLE: u8 = 0x01;

// MIG_RP_MSG_*
pub const MIG_RP_MSG_INVALID: u16 = 0;
pub const MIG_RP_MSG_SHUT: u16 = 1;
pub const MIG_RP_MSG_PONG: u16 = 2;
pub const MIG_RP_MSG_REQ_PAGES_ID: u16 = 3;
pub const MIG_RP_MSG_REQ_PAGES: u16 = 4;
pub const MIG_RP_MSG_RECV_BITMAP: u16 = 5;
pub const MIG_RP_MSG_RESUME_ACK: u16 = 6;
pub const MIG_RP_MSG_SWITCHOVER_ACK: u16 = 7;
pub const MIG_RP_MSG_MAX: u16 = 8;

/// Value carried by RESUME_ACK.
pub const MIGRATION_RESUME_ACK_VALUE: u32 = 1;
/// End marker after a RECV_BITMAP reply's bitmap.
pub const RAMBLOCK_RECV_BITMAP_ENDING: u64 = 0x0123_4567_89ab_cdef;

/// Multifd channel magic (first 4 bytes of a multifd connection).
pub const MULTIFD_MAGIC: u32 = 0x1122_3344;

/// Postcopy discard payload version.
pub const POSTCOPY_RAM_DISCARD_VERSION: u8 = 0;
/// The source batches at most this many ranges per discard command.
pub const MAX_DISCARDS_PER_COMMAND: usize = 12;
