//! The cell's Landlock ruleset: an independent second fence inside the mount namespace.
//!
//! Read and execute everywhere in the cell's root (which already holds only what the cell
//! may see); write only to the workspace, /tmp, the home directory and /dev. TCP bind and
//! connect are refused on every port (the cell has no network; the gateway's door, when it
//! exists, is the only port to allow). Abstract unix sockets and signals are scoped to the
//! cell. Landlock itself is required; the network and scope parts need ABI 4 and 6 and are
//! reported, never silently assumed.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// What Landlock enforced.
pub(crate) struct Enforced {
    pub(crate) abi: i32,
    pub(crate) summary: String,
}

/// Writable places inside the cell.
pub(crate) const WRITABLE: &[&str] = &["/workspace", "/tmp", "/home/agent", "/dev"];

/// Restricts the calling process (and its future children).
pub(crate) fn restrict(abi_version: i32, door_ports: &[u16]) -> Result<Enforced, String> {
    let abi = match abi_version {
        i32::MIN..=0 => return Err("landlock is not enabled in this kernel (add `landlock` to the `lsm=` boot parameter; kernel 5.13 or newer)".to_owned()),
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => ABI::V6,
    };
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    let mut parts = vec![format!("filesystem (ABI {abi_version})")];
    if abi_version >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
        parts.push(if door_ports.is_empty() {
            "tcp bind/connect denied".to_owned()
        } else {
            format!("tcp connect only to the door ({door_ports:?}), bind denied")
        });
    }
    if abi_version >= 6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(err)?;
        parts.push("abstract unix sockets and signals scoped".to_owned());
    }
    let read_exec = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let status = ruleset
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/"], read_exec))
        .map_err(err)?
        .add_rules(path_beneath_rules(WRITABLE, all))
        .map_err(err)?
        .add_rules(
            door_ports
                .iter()
                .filter(|_| abi_version >= 4)
                .map(|p| Ok::<_, landlock::RulesetError>(NetPort::new(*p, AccessNet::ConnectTcp))),
        )
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(Enforced {
            abi: abi_version,
            summary: parts.join(", "),
        }),
        other => Err(format!("landlock ruleset not fully enforced ({other:?})")),
    }
}
