//! Build facts reported by `--version`, `--version-json` and the `version`
//! RPC (spec §1.3, §3.1).

/// The build information of this binary.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    pub version: &'static str,
    pub tag: &'static str,
    pub commit: &'static str,
    pub build_date: &'static str,
    pub target: &'static str,
    pub rust_version: &'static str,
    pub cargo_version: &'static str,
    /// The resolved dependency list; reported only in verbose mode.
    pub dependencies: &'static str,
}

/// The version reported everywhere: the conmon-rs release whose feature set
/// ringmon covers, with ringmon's own version as semver build metadata.
///
/// Why not ringmon's version alone: clients compare the reported version
/// with conmon-rs releases to decide what the server can do (the v0.7.3
/// client refuses `createNamespaces` below 0.5.0), and build metadata is
/// ignored in semver comparisons. 0.7.0 is the newest level whose features
/// are all served (namespaces 0.5, fd passing, env vars and per-request
/// cgroup manager 0.6, the streaming server 0.7).
pub const VERSION: &str = concat!("0.7.0+ringmon.", env!("CARGO_PKG_VERSION"));

/// This binary's build information.
pub const BUILD: BuildInfo = BuildInfo {
    version: VERSION,
    tag: env!("RINGMON_TAG"),
    commit: env!("RINGMON_COMMIT"),
    build_date: env!("RINGMON_BUILD_DATE"),
    target: env!("RINGMON_TARGET"),
    rust_version: env!("RINGMON_RUSTC_VERSION"),
    cargo_version: env!("RINGMON_CARGO_VERSION"),
    dependencies: env!("RINGMON_DEPENDENCIES"),
};

impl BuildInfo {
    /// The `cargo tree` stand-in: empty unless verbose.
    pub fn tree(&self, verbose: bool) -> String {
        if verbose {
            format!(
                "ringmon v{}: {}",
                env!("CARGO_PKG_VERSION"),
                self.dependencies
            )
        } else {
            String::new()
        }
    }

    /// Text form of `--version`.
    pub fn text(&self, verbose: bool) -> String {
        let tag = if self.tag.is_empty() {
            "none"
        } else {
            self.tag
        };
        let mut s = format!(
            "version: {}\ntag: {}\ncommit: {}\nbuild: {}\ntarget: {}\n{}\n{}\n",
            self.version,
            tag,
            self.commit,
            self.build_date,
            self.target,
            self.rust_version,
            self.cargo_version
        );
        if verbose {
            s.push_str(&format!("\ncargo tree: {}\n", self.tree(true)));
        }
        s
    }

    /// JSON form of `--version-json` (one line, keys in spec order).
    pub fn json(&self, verbose: bool) -> String {
        format!(
            "{{\"verbose\":{},\"version\":{},\"tag\":{},\"commit\":{},\"build_date\":{},\"target\":{},\"rust_version\":{},\"cargo_version\":{},\"cargo_tree\":{}}}",
            verbose,
            json_string(self.version),
            json_string(self.tag),
            json_string(self.commit),
            json_string(self.build_date),
            json_string(self.target),
            json_string(self.rust_version),
            json_string(self.cargo_version),
            json_string(&self.tree(verbose)),
        )
    }
}

/// Minimal JSON string escaping (quotes, backslash, control characters).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn version_is_semver_and_fields_set() {
        // Semver: MAJOR.MINOR.PATCH, numeric, then build metadata made of
        // dot-separated [0-9A-Za-z-] identifiers (what clients parse).
        let (core, build) = BUILD.version.split_once('+').expect("build metadata");
        let parts: Vec<&str> = core.split('.').collect();
        assert_eq!(parts.len(), 3, "{core}");
        assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()), "{core}");
        assert_eq!(build, format!("ringmon.{}", env!("CARGO_PKG_VERSION")));
        assert!(build
            .split('.')
            .all(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')));
        assert!(!BUILD.commit.is_empty());
        assert!(!BUILD.rust_version.is_empty());
        assert!(BUILD.tree(false).is_empty());
        assert!(!BUILD.tree(true).is_empty());
        assert!(BUILD
            .json(false)
            .starts_with("{\"verbose\":false,\"version\":"));
    }
}
