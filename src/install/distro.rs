//! Which system this is (os-release) and what we know about it (`distros/*.yaml`).
//!
//! The distro data is compiled into the binary, so an installed posthaste needs nothing
//! beside it. Detection matches os-release's `ID` first, then its `ID_LIKE` words, and then
//! the `VERSION_ID` against the releases the matching file lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::host::Host;

/// The distro files, in the order they are matched.
const DISTRO_FILES: &[(&str, &str)] = &[
    ("debian.yaml", include_str!("../../distros/debian.yaml")),
    ("ubuntu.yaml", include_str!("../../distros/ubuntu.yaml")),
    ("rhel.yaml", include_str!("../../distros/rhel.yaml")),
    ("fedora.yaml", include_str!("../../distros/fedora.yaml")),
];

/// os-release(5): `KEY=value` lines, values optionally quoted.
#[derive(Debug, Clone, Default)]
pub struct OsRelease {
    pub fields: BTreeMap<String, String>,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            fields.insert(k.trim().to_owned(), unquote(v.trim()));
        }
        OsRelease { fields }
    }

    /// The target's os-release: /etc/os-release, or /usr/lib/os-release as os-release(5) says.
    pub fn read(host: &Host) -> anyhow::Result<(OsRelease, PathBuf)> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            let path = host.path(p);
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok((OsRelease::parse(&text), path));
            }
        }
        bail!(
            "cannot read {} (nor usr/lib/os-release): which system is this?\nhelp: posthaste installs on {}; with --root, DIR must hold the target system",
            host.path("/etc/os-release").display(),
            supported_list()
        )
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.get("ID")
    }
    pub fn id_like(&self) -> Vec<&str> {
        self.get("ID_LIKE").split_whitespace().collect()
    }
    pub fn version_id(&self) -> &str {
        self.get("VERSION_ID")
    }
    /// PRETTY_NAME, or something readable built from NAME and VERSION_ID.
    pub fn pretty(&self) -> String {
        match self.get("PRETTY_NAME") {
            "" => format!("{} {}", self.get("NAME"), self.version_id()).trim().to_owned(),
            p => p.to_owned(),
        }
    }
}

fn unquote(v: &str) -> String {
    let inner = if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Apt,
    Dnf,
}

impl PackageManager {
    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
        }
    }
}

/// Something per optional component.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerComponent<T> {
    #[serde(default)]
    pub antispam: T,
    #[serde(default)]
    pub antivirus: T,
    #[serde(default)]
    pub guard: T,
}

impl<T> PerComponent<T> {
    /// The entries of the enabled components, in a fixed order.
    pub fn enabled(&self, c: &super::answers::Components) -> Vec<&T> {
        let mut v = Vec::new();
        if c.antispam {
            v.push(&self.antispam);
        }
        if c.antivirus {
            v.push(&self.antivirus);
        }
        if c.guard {
            v.push(&self.guard);
        }
        v
    }
}

/// A file a component needs beside its package (rendered from `templates/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentFile {
    pub component: String,
    pub path: PathBuf,
    pub template: String,
}

/// A package repository a component's packages come from (rspamd's own on Enterprise
/// Linux): its `.repo` file, rendered from `templates/`, and the key its packages are signed
/// with. Both come before any package is installed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    pub component: String,
    pub path: PathBuf,
    pub template: String,
    /// The signing key's URL, imported with `rpm --import` before the packages.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Family {
    family: String,
    name: String,
    ids: Vec<String>,
    package_manager: PackageManager,
    nologin: PathBuf,
    packages: PerComponent<Vec<String>>,
    services: PerComponent<Vec<String>>,
    clamd_socket: String,
    #[serde(default)]
    repositories: Vec<Repository>,
    #[serde(default)]
    files: Vec<ComponentFile>,
    releases: BTreeMap<String, Release>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    name: String,
    /// For `"*"`: the oldest supported VERSION_ID.
    #[serde(default)]
    min_version: Option<u32>,
    #[serde(default)]
    packages: Option<PerComponent<Vec<String>>>,
    #[serde(default)]
    services: Option<PerComponent<Vec<String>>>,
    /// Packages that must be installed before a component's packages (e.g. EPEL).
    #[serde(default)]
    prerequisites: PerComponent<Vec<String>>,
    /// Where a package that is in no configured repository is installed from.
    #[serde(default)]
    package_sources: BTreeMap<String, String>,
}

/// Everything the installer needs to know about the detected system.
#[derive(Debug, Clone)]
pub struct Distro {
    /// `debian-12`, `rhel-9`, `fedora-41`: family and release.
    pub id: String,
    /// The release's name in our data (`Debian 12 (bookworm)`).
    pub name: String,
    /// What os-release calls it (`Rocky Linux 9.6 (Blue Onyx)`).
    pub pretty: String,
    pub family: String,
    pub package_manager: PackageManager,
    pub nologin: PathBuf,
    pub packages: PerComponent<Vec<String>>,
    pub services: PerComponent<Vec<String>>,
    pub prerequisites: PerComponent<Vec<String>>,
    pub package_sources: BTreeMap<String, String>,
    pub clamd_socket: String,
    pub repositories: Vec<Repository>,
    pub files: Vec<ComponentFile>,
}

fn families() -> Vec<Family> {
    DISTRO_FILES
        .iter()
        .map(|(name, text)| {
            serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("distros/{name} is invalid: {e}"))
        })
        .collect()
}

/// "Debian 11, 12, 13; Ubuntu 22.04, 24.04; …" for error messages and docs.
pub fn supported_list() -> String {
    families()
        .iter()
        .map(|f| {
            let mut releases: Vec<(&String, &Release)> = f.releases.iter().collect();
            releases.sort_by(|a, b| {
                let n = |k: &str| k.parse::<f64>().unwrap_or(f64::MAX);
                n(a.0).total_cmp(&n(b.0))
            });
            let versions: Vec<String> = releases
                .into_iter()
                .map(|(k, r)| match (k.as_str(), r.min_version) {
                    ("*", Some(min)) => format!("{min} or later"),
                    _ => k.clone(),
                })
                .collect();
            format!("{} {}", f.name, versions.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Match os-release against the distro data.
pub fn detect(os: &OsRelease, source: &Path) -> anyhow::Result<Distro> {
    let fams = families();
    let id = os.id();
    let by_id = fams.iter().find(|f| f.ids.iter().any(|i| i == id));
    let family = by_id.or_else(|| {
        os.id_like().iter().find_map(|like| fams.iter().find(|f| f.ids.iter().any(|i| i == like)))
    });
    let unsupported = || {
        anyhow::anyhow!(
            "unsupported system: {} (ID={}{}, VERSION_ID={}) in {}\nhelp: posthaste supports {}",
            os.pretty(),
            id,
            if os.get("ID_LIKE").is_empty() {
                String::new()
            } else {
                format!(", ID_LIKE=\"{}\"", os.get("ID_LIKE"))
            },
            os.version_id(),
            source.display(),
            supported_list()
        )
    };
    let Some(family) = family else { return Err(unsupported()) };
    // A derivative (matched through ID_LIKE) must still have a release number we know,
    // which in practice means only rebuilds that keep the upstream numbering qualify.
    let version = os.version_id();
    let major = version.split('.').next().unwrap_or("");
    let release = family.releases.iter().find(|(k, r)| {
        if k.as_str() == "*" {
            let min = r.min_version.unwrap_or(0);
            major.parse::<u32>().map(|m| m >= min).unwrap_or(false)
        } else {
            version == k.as_str() || (!k.contains('.') && major == k.as_str())
        }
    });
    let Some((key, release)) = release else { return Err(unsupported()) };
    let release_id = if key == "*" { major } else { key.as_str() };
    Ok(Distro {
        id: format!("{}-{}", family.family, release_id),
        name: if key == "*" { format!("{} {}", release.name, major) } else { release.name.clone() },
        pretty: os.pretty(),
        family: family.family.clone(),
        package_manager: family.package_manager,
        nologin: family.nologin.clone(),
        packages: release.packages.clone().unwrap_or_else(|| family.packages.clone()),
        services: release.services.clone().unwrap_or_else(|| family.services.clone()),
        prerequisites: release.prerequisites.clone(),
        package_sources: release.package_sources.clone(),
        clamd_socket: family.clamd_socket.clone(),
        repositories: family.repositories.clone(),
        files: family.files.clone(),
    })
}

/// Read the target's os-release and detect the distro.
pub fn detect_host(host: &Host) -> anyhow::Result<Distro> {
    let (os, path) = OsRelease::read(host)?;
    detect(&os, &path).with_context(|| format!("cannot install on {}", host.root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_distro_files_parse() {
        assert_eq!(families().len(), DISTRO_FILES.len());
        let list = supported_list();
        assert!(list.contains("Debian 11, 12, 13"), "{list}");
        assert!(list.contains("Fedora 41 or later"), "{list}");
    }

    #[test]
    fn os_release_quoting() {
        let os = OsRelease::parse("ID=\"rocky\"\nID_LIKE='rhel centos fedora'\nNAME=\"A \\\"b\\\"\"\n# c\n");
        assert_eq!(os.id(), "rocky");
        assert_eq!(os.id_like(), ["rhel", "centos", "fedora"]);
        assert_eq!(os.get("NAME"), "A \"b\"");
    }

    #[test]
    fn versions_match_by_major_or_exactly() {
        let d = |text: &str| detect(&OsRelease::parse(text), Path::new("os-release"));
        assert_eq!(d("ID=rocky\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=9.4").unwrap().id, "rhel-9");
        assert_eq!(d("ID=ubuntu\nVERSION_ID=24.04").unwrap().id, "ubuntu-24.04");
        assert!(d("ID=ubuntu\nVERSION_ID=24.10").is_err());
        assert_eq!(d("ID=fedora\nVERSION_ID=42").unwrap().id, "fedora-42");
        assert!(d("ID=fedora\nVERSION_ID=39").is_err());
        let e = d("ID=arch\nPRETTY_NAME=\"Arch Linux\"").unwrap_err().to_string();
        assert!(
            e.contains("Arch Linux")
                && e.contains("ID=arch")
                && e.contains("help: posthaste supports Debian"),
            "{e}"
        );
    }
}
