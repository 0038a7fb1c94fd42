//! `[allow::hosts]` and `[allow::paths]`: who may talk to a server, and which local
//! directories an rsync order may write to.
//!
//! # Hosts
//!
//! [`HostAllowList`] is built from `host[]` entries, each one of:
//!
//! * an IPv4 or IPv6 address (`10.1.2.3`, `::1`): that address only;
//! * a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`): every address in it, **with
//!   standard CIDR semantics**. The original excluded the network and broadcast
//!   addresses of a `/len` shorter than 32 (so `127.0.0.0/8` did not admit `127.0.0.0`,
//!   and a `/31` admitted nothing); we do not, and `/31` and `/32` work as expected;
//! * a host name (`build.example.org`): resolved once, when the list is built, with the
//!   system resolver; **all** its addresses are admitted (the original took the first
//!   IPv4 address only).
//!
//! A peer connecting over IPv6 with an IPv4-mapped address (`::ffff:a.b.c.d`, what a
//! dual-stack `[::]` listener reports) is matched as the IPv4 address `a.b.c.d`. An empty
//! list admits nobody.
//!
//! # Paths
//!
//! [`PathAllowList`] is built from `path[]` entries, each an absolute directory. The
//! original compared strings by prefix (so `/srv/target/../../etc` passed and symlinks
//! were not considered); [`PathAllowList::check`] instead resolves the target on the
//! file system before comparing, component by component:
//!
//! 1. the target must be absolute;
//! 2. its longest existing ancestor is canonicalized (symlinks and `..` resolved by the
//!    kernel), and the components that do not exist yet are appended; those may not
//!    contain `..`, and a dangling symlink on the way is refused;
//! 3. each root is canonicalized at check time (roots may be created after start-up;
//!    a root that does not exist admits nothing);
//! 4. the target is allowed iff the resolved path equals a resolved root or lies below
//!    it, comparing whole components: `/srv/target2` is **not** under `/srv/target`.
//!
//! `path[] = /` allows every absolute path, as in the original.
//!
//! The check is made when an order arrives; a symlink planted between the check and the
//! use is not detected. The roots should therefore not be writable by untrusted users.

use std::fmt;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

/// Why a `host[]` entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostSpecError {
    /// Neither an address, a CIDR network nor a host name.
    #[error(
        "invalid host {0:?} (expected an IP address, a network like 10.0.0.0/8, or a host name)"
    )]
    Invalid(String),
    /// The host name could not be resolved.
    #[error("cannot resolve host name {host:?}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host name resolved to no address.
    #[error("host name {0:?} has no address")]
    NoAddress(String),
}

/// The peers a server accepts (`[allow::hosts] host[]`). See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAllowList {
    nets: Vec<IpNet>,
}

impl HostAllowList {
    /// An empty list, which admits nobody.
    pub fn new() -> HostAllowList {
        HostAllowList::default()
    }

    /// Adds one `host[]` entry: an address, a CIDR network or a host name (resolved now).
    pub fn push_spec(&mut self, spec: &str) -> Result<(), HostSpecError> {
        let spec = spec.trim();
        if let Ok(ip) = spec.parse::<IpAddr>() {
            self.push_net(IpNet::from(ip));
            return Ok(());
        }
        if let Ok(net) = spec.parse::<IpNet>() {
            self.push_net(net);
            return Ok(());
        }
        let hostname = !spec.is_empty()
            && spec.len() <= 253
            && spec.bytes().any(|b| b.is_ascii_alphabetic())
            && spec
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !hostname {
            return Err(HostSpecError::Invalid(spec.to_owned()));
        }
        let addrs: Vec<_> = (spec, 0)
            .to_socket_addrs()
            .map_err(|source| HostSpecError::Resolve {
                host: spec.to_owned(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(HostSpecError::NoAddress(spec.to_owned()));
        }
        for addr in addrs {
            self.push_net(IpNet::from(addr.ip()));
        }
        Ok(())
    }

    /// Adds a network (an address is a `/32` or `/128`). IPv4-mapped IPv6 networks
    /// (`::ffff:0:0/96` and longer) are stored as the IPv4 networks they map.
    pub fn push_net(&mut self, net: IpNet) {
        let net = net.trunc();
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
                Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            _ => net,
        };
        if !self.nets.contains(&net) {
            self.nets.push(net);
        }
    }

    /// Whether `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The networks admitted (addresses as `/32` or `/128`), host names resolved.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// `true` if nobody is admitted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Why a `path[]` entry could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathSpecError {
    /// The entry is not an absolute path.
    #[error("allowed path {0:?} must be absolute")]
    NotAbsolute(String),
}

/// The directories rsync orders may write into (`[allow::paths] path[]`). See the
/// [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathAllowList {
    roots: Vec<PathBuf>,
}

/// Why [`PathAllowList::check`] refused a target (for logs; the reply only says
/// [`PathDenied`]'s text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The target is not an absolute path.
    NotAbsolute,
    /// The part of the target that does not exist yet contains `..`.
    DotDot,
    /// A symlink on the way points nowhere, so where the target lands is unknown.
    DanglingSymlink,
    /// The file system refused to resolve the target (permissions, a file in the middle,
    /// a symlink loop, a NUL byte).
    Unresolvable(io::ErrorKind),
    /// The resolved target lies outside every (existing) allowed root.
    Outside,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotAbsolute => f.write_str("not an absolute path"),
            DenyReason::DotDot => f.write_str("`..` below a directory that does not exist"),
            DenyReason::DanglingSymlink => f.write_str("dangling symlink on the way"),
            DenyReason::Unresolvable(kind) => write!(f, "cannot resolve: {kind}"),
            DenyReason::Outside => f.write_str("outside every allowed path"),
        }
    }
}

/// A target refused by [`PathAllowList::check`]. Displays as the original's reply text:
/// `<target> is not allowed!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDenied {
    target: String,
    reason: DenyReason,
}

impl PathDenied {
    /// The target as given.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Why it was refused.
    pub fn reason(&self) -> DenyReason {
        self.reason
    }
}

impl fmt::Display for PathDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not allowed!", self.target)
    }
}

impl std::error::Error for PathDenied {}

impl PathAllowList {
    /// An empty list, which allows nothing.
    pub fn new() -> PathAllowList {
        PathAllowList::default()
    }

    /// Adds one `path[]` entry (trimmed; must be absolute). The root need not exist yet.
    pub fn push_root(&mut self, root: &str) -> Result<(), PathSpecError> {
        let root = root.trim();
        let path = Path::new(root);
        if !path.is_absolute() {
            return Err(PathSpecError::NotAbsolute(root.to_owned()));
        }
        let path = path.components().collect::<PathBuf>();
        if !self.roots.contains(&path) {
            self.roots.push(path);
        }
        Ok(())
    }

    /// The roots as configured (not canonicalized).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `true` if nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Resolves `target` and returns the resolved path if it is an allowed root or lies
    /// below one. See the [module docs](self) for the rules.
    pub fn check(&self, target: &str) -> Result<PathBuf, PathDenied> {
        let deny = |reason| PathDenied {
            target: target.to_owned(),
            reason,
        };
        let resolved = resolve(target).map_err(deny)?;
        let allowed = self.roots.iter().any(|root| match root.canonicalize() {
            Ok(root) => resolved.starts_with(&root),
            Err(_) => false,
        });
        if allowed {
            Ok(resolved)
        } else {
            Err(deny(DenyReason::Outside))
        }
    }

    /// Like [`check`](Self::check), but returns the allowed root (canonical) that holds
    /// the target and the target relative to it, so that the caller can open the root
    /// and reach the target beneath it without following links (`openat2`): a link
    /// planted between the check and the use then cannot lead out of the root.
    pub fn check_beneath(&self, target: &str) -> Result<(PathBuf, PathBuf), PathDenied> {
        let resolved = self.check(target)?;
        // The deepest root that holds it (the most specific).
        let root = self
            .roots
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .filter(|root| resolved.starts_with(root))
            .max_by_key(|root| root.components().count());
        match root {
            Some(root) => {
                let rel = resolved
                    .strip_prefix(&root)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Ok((root, rel))
            }
            None => Err(PathDenied {
                target: target.to_owned(),
                reason: DenyReason::Outside,
            }),
        }
    }
}

/// Canonicalizes the longest existing ancestor of `target` and appends the rest.
fn resolve(target: &str) -> Result<PathBuf, DenyReason> {
    let path = Path::new(target);
    if !path.is_absolute() {
        return Err(DenyReason::NotAbsolute);
    }
    // Normalized (no `.`, no `//`, no trailing `/`) so that popping `existing` and
    // taking from `rest` stay in step.
    let mut existing: PathBuf = path.components().collect();
    // Components that do not exist yet, last first.
    let mut missing: Vec<Component<'_>> = Vec::new();
    let mut rest = path.components().rev();
    loop {
        match existing.canonicalize() {
            Ok(mut base) => {
                for component in missing.iter().rev() {
                    match component {
                        Component::Normal(name) => base.push(name),
                        _ => return Err(DenyReason::DotDot),
                    }
                }
                return Ok(base);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Something that exists but cannot be canonicalized is a symlink whose
                // target is missing: where it would lead is not ours to guess.
                if existing.symlink_metadata().is_ok() {
                    return Err(DenyReason::DanglingSymlink);
                }
                match rest.next() {
                    Some(
                        component @ (Component::Normal(_)
                        | Component::ParentDir
                        | Component::CurDir),
                    ) => {
                        missing.push(component);
                        if !existing.pop() {
                            return Err(DenyReason::Unresolvable(e.kind()));
                        }
                    }
                    _ => return Err(DenyReason::Unresolvable(e.kind())),
                }
            }
            Err(e) => return Err(DenyReason::Unresolvable(e.kind())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn hosts(specs: &[&str]) -> HostAllowList {
        let mut list = HostAllowList::new();
        for s in specs {
            list.push_spec(s).unwrap();
        }
        list
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn check_beneath_names_the_deepest_root_and_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        let mut list = PathAllowList::new();
        list.push_root(base.to_str().unwrap()).unwrap();
        list.push_root(base.join("a").to_str().unwrap()).unwrap();
        let target = base.join("a/b/new/dir");
        let (root, rel) = list.check_beneath(target.to_str().unwrap()).unwrap();
        assert_eq!(root, base.join("a"));
        assert_eq!(rel, Path::new("b/new/dir"));
        let (root, rel) = list
            .check_beneath(base.join("a").to_str().unwrap())
            .unwrap();
        assert_eq!((root, rel), (base.join("a"), PathBuf::new()));
        assert!(list.check_beneath("/etc").is_err());
    }

    #[test]
    fn empty_host_list_denies_all() {
        let list = HostAllowList::new();
        assert!(list.is_empty());
        assert!(!list.allows(ip("127.0.0.1")));
        assert!(!list.allows(ip("::1")));
    }

    #[test]
    fn addresses_and_networks() {
        let list = hosts(&[
            "127.0.0.1",
            "::1",
            "10.0.0.0/8",
            " 192.168.1.4/31 ",
            "fd00::/16",
            "172.16.5.5/32",
        ]);
        assert!(list.allows(ip("127.0.0.1")));
        assert!(!list.allows(ip("127.0.0.2")));
        assert!(list.allows(ip("::1")));
        // Standard CIDR: network and broadcast addresses are included (unlike the original).
        assert!(list.allows(ip("10.0.0.0")));
        assert!(list.allows(ip("10.255.255.255")));
        assert!(!list.allows(ip("11.0.0.1")));
        assert!(list.allows(ip("192.168.1.4")));
        assert!(list.allows(ip("192.168.1.5")));
        assert!(!list.allows(ip("192.168.1.6")));
        assert!(list.allows(ip("fd00:1::5")));
        assert!(!list.allows(ip("fd01::5")));
        assert!(list.allows(ip("172.16.5.5")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_entries() {
        let list = hosts(&["10.0.0.0/8", "::ffff:192.0.2.0/120"]);
        assert!(list.allows(ip("::ffff:10.1.2.3")));
        assert!(!list.allows(ip("::ffff:11.1.2.3")));
        assert!(list.allows(ip("192.0.2.77")), "mapped entry stored as IPv4");
        assert!(list.allows(ip("::ffff:192.0.2.77")));
        assert!(
            !list.allows(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
    }

    #[test]
    fn host_names_resolve_to_all_addresses() {
        let list = hosts(&["localhost"]);
        assert!(!list.is_empty());
        assert!(list.nets().iter().all(|n| n.addr().is_loopback()));
    }

    #[test]
    fn bad_host_specs() {
        let mut list = HostAllowList::new();
        for bad in ["", "10.0.0.0/33", "1.2.3.4/x", "a b", "host/8"] {
            assert!(
                matches!(list.push_spec(bad), Err(HostSpecError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(list.push_spec("no-such-host.invalid").is_err());
    }

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    /// base/target/{a/, file}, base/other/, base/target2/
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        for d in ["target/a", "other", "target2"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("target/file"), b"x").unwrap();
        Tree { _dir: dir, base }
    }

    impl Tree {
        fn s(&self, rel: &str) -> String {
            format!("{}/{rel}", self.base.display())
        }

        fn list(&self, roots: &[&str]) -> PathAllowList {
            let mut list = PathAllowList::new();
            for r in roots {
                list.push_root(&self.s(r)).unwrap();
            }
            list
        }
    }

    #[test]
    fn allowed_targets() {
        let t = tree();
        let list = t.list(&["target"]);
        assert_eq!(list.check(&t.s("target")).unwrap(), t.base.join("target"));
        assert_eq!(list.check(&t.s("target/")).unwrap(), t.base.join("target"));
        assert_eq!(
            list.check(&t.s("target/a")).unwrap(),
            t.base.join("target/a")
        );
        assert_eq!(
            list.check(&t.s("target//./a/")).unwrap(),
            t.base.join("target/a")
        );
        // Not yet existing below the root: fine.
        assert_eq!(
            list.check(&t.s("target/new/deeper")).unwrap(),
            t.base.join("target/new/deeper")
        );
        // `..` inside the existing part is resolved by the kernel.
        assert_eq!(
            list.check(&t.s("target/a/../a")).unwrap(),
            t.base.join("target/a")
        );
    }

    #[test]
    fn dotdot_escapes() {
        let t = tree();
        let list = t.list(&["target"]);
        for bad in [
            "target/..",
            "target/../other",
            "target/a/../../other",
            "target/new/../../other",
            "target/new/..",
        ] {
            let err = list.check(&t.s(bad)).unwrap_err();
            assert_eq!(err.to_string(), format!("{} is not allowed!", t.s(bad)));
        }
        let err = list.check(&t.s("target/new/../a")).unwrap_err();
        assert_eq!(err.reason(), DenyReason::DotDot);
        assert_eq!(
            list.check("/etc/passwd").unwrap_err().reason(),
            DenyReason::Outside
        );
    }

    #[test]
    fn relative_and_odd_targets() {
        let t = tree();
        let list = t.list(&["target"]);
        assert_eq!(
            list.check("target").unwrap_err().reason(),
            DenyReason::NotAbsolute
        );
        assert_eq!(
            list.check("").unwrap_err().reason(),
            DenyReason::NotAbsolute
        );
        assert!(list.check(&t.s("target/a\0b")).is_err());
        assert!(matches!(
            list.check(&t.s("target/file/x")).unwrap_err().reason(),
            DenyReason::Unresolvable(_)
        ));
    }

    #[test]
    fn prefix_sibling_is_not_below() {
        let t = tree();
        let list = t.list(&["target"]);
        assert_eq!(
            list.check(&t.s("target2")).unwrap_err().reason(),
            DenyReason::Outside
        );
        assert_eq!(
            list.check(&t.s("target2/x")).unwrap_err().reason(),
            DenyReason::Outside
        );
    }

    #[test]
    fn symlink_pointing_outside() {
        let t = tree();
        symlink(t.base.join("other"), t.base.join("target/escape")).unwrap();
        symlink(t.base.join("other/missing"), t.base.join("target/dangling")).unwrap();
        symlink("a", t.base.join("target/inside")).unwrap();
        let list = t.list(&["target"]);
        assert_eq!(
            list.check(&t.s("target/escape")).unwrap_err().reason(),
            DenyReason::Outside
        );
        assert_eq!(
            list.check(&t.s("target/escape/x")).unwrap_err().reason(),
            DenyReason::Outside
        );
        assert_eq!(
            list.check(&t.s("target/dangling")).unwrap_err().reason(),
            DenyReason::DanglingSymlink
        );
        assert_eq!(
            list.check(&t.s("target/dangling/x")).unwrap_err().reason(),
            DenyReason::DanglingSymlink
        );
        assert_eq!(
            list.check(&t.s("target/inside/new")).unwrap(),
            t.base.join("target/a/new")
        );
    }

    #[test]
    fn symlinked_root() {
        let t = tree();
        symlink(t.base.join("target"), t.base.join("link")).unwrap();
        // The root is a symlink: targets given through it or through its destination pass.
        let list = t.list(&["link"]);
        assert_eq!(list.check(&t.s("link/a")).unwrap(), t.base.join("target/a"));
        assert_eq!(
            list.check(&t.s("target/a")).unwrap(),
            t.base.join("target/a")
        );
        assert!(list.check(&t.s("other")).is_err());
    }

    #[test]
    fn missing_root_allows_nothing_until_created() {
        let t = tree();
        let list = t.list(&["later"]);
        assert_eq!(
            list.check(&t.s("later/x")).unwrap_err().reason(),
            DenyReason::Outside
        );
        std::fs::create_dir(t.base.join("later")).unwrap();
        assert_eq!(list.check(&t.s("later/x")).unwrap(), t.base.join("later/x"));
    }

    #[test]
    fn slash_allows_everything() {
        let mut list = PathAllowList::new();
        list.push_root("/").unwrap();
        assert!(list.check("/etc/passwd").is_ok());
        assert!(list.check("/no/such/dir").is_ok());
        assert!(list.check("relative").is_err());
    }

    #[test]
    fn roots_must_be_absolute() {
        let mut list = PathAllowList::new();
        assert_eq!(
            list.push_root("srv/x"),
            Err(PathSpecError::NotAbsolute("srv/x".into()))
        );
        assert!(list.is_empty());
        assert!(list.check("/srv/x").is_err());
    }
}
