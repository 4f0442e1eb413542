//! What the command line said about the guest (`-name`, `-uuid`, `-smp`),
//! kept for the QMP queries that report it (`query-name`, `query-uuid`,
//! `query-cpus-fast`).

/// One vCPU of the `-smp` topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuIds {
    pub socket: u64,
    pub die: u64,
    pub module: u64,
    pub core: u64,
    pub thread: u64,
}

/// The guest as the command line describes it.
#[derive(Clone, Debug, Default)]
pub struct GuestInfo {
    pub name: Option<String>,
    pub uuid: Option<[u8; 16]>,
    /// One entry per vCPU present at start (`-smp cpus`).
    pub vcpus: Vec<VcpuIds>,
    /// Dies and modules per socket/die (their ids are reported when > 1).
    pub dies: u64,
    pub modules: u64,
}
