//! The cell's Landlock ruleset: an independent second fence inside the mount namespace.
//!
//! Read and execute everywhere in the cell's root (which already holds only what the cell
//! may see); write only to the workspace, /tmp, the home directory and /dev. TCP bind is
//! refused on every port, and so is connect in a cell without a network door (behind a
//! door, the namespace's firewall sends every connection to the gateway). Abstract unix sockets and signals are scoped to the
//! cell. Landlock itself is required; the network and scope parts need ABI 4 and 6 and are
//! reported, never silently assumed.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, Ruleset, RulesetAttr,
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
pub(crate) fn restrict(abi_version: i32, network_door: bool) -> Result<Enforced, String> {
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
        // Behind a network door every TCP connection is redirected to the gateway by the
        // namespace's firewall, whatever its port, so only binding is denied here.
        // Without a door there is nothing to connect to, and both are denied.
        let (access, summary) = if network_door {
            (
                BitFlags::from(AccessNet::BindTcp),
                "tcp bind denied (connections end at the door)",
            )
        } else {
            (AccessNet::from_all(abi), "tcp bind/connect denied")
        };
        ruleset = ruleset.handle_access(access).map_err(err)?;
        parts.push(summary.to_owned());
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
