//! Finding files: include and exclude globs, walked from the literal
//! directory prefix of each pattern. Symlinks to files are followed (the
//! kubelet's `/var/log/containers` links); symlinks to directories are not,
//! so a link loop cannot make a scan endless. A file reached by several
//! paths is reported once, by its device and inode.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::fingerprint::{FileKey, FileStat};

/// Deepest directory level a `**` pattern descends to.
const MAX_DEPTH: usize = 32;

/// The compiled globs of one source.
#[derive(Debug, Clone)]
pub(crate) struct Globs {
    include: GlobSet,
    exclude: GlobSet,
    /// Where each include pattern's walk starts, and how deep it may go.
    roots: Vec<(PathBuf, usize)>,
}

/// A file a scan found.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The path the glob matched (a symlink's own path, if it is one).
    pub(crate) path: PathBuf,
    /// What `stat` (following symlinks) says.
    pub(crate) stat: FileStat,
    /// The path was a symlink.
    pub(crate) via_symlink: bool,
}

impl Globs {
    /// Compiles the patterns (already validated by the config).
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Globs, globset::Error> {
        let build = |pats: &[String]| -> Result<GlobSet, globset::Error> {
            let mut b = GlobSetBuilder::new();
            for p in pats {
                b.add(GlobBuilder::new(p).literal_separator(true).build()?);
            }
            b.build()
        };
        let mut roots: Vec<(PathBuf, usize)> = include.iter().map(|p| walk_root(p)).collect();
        roots.sort();
        roots.dedup();
        Ok(Globs {
            include: build(include)?,
            exclude: build(exclude)?,
            roots,
        })
    }

    /// Whether a path is included and not excluded.
    pub(crate) fn matches(&self, path: &Path) -> bool {
        self.include.is_match(path) && !self.exclude.is_match(path)
    }

    /// Walks every root and returns the matching regular files, one entry
    /// per device and inode (a real path wins over a symlink to it).
    pub(crate) fn scan(&self) -> Vec<Found> {
        let mut by_key: HashMap<FileKey, Found> = HashMap::new();
        for (root, depth) in &self.roots {
            self.walk(root, *depth, &mut by_key);
        }
        let mut out: Vec<Found> = by_key.into_values().collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn walk(&self, dir: &Path, depth: usize, out: &mut HashMap<FileKey, Found>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if depth > 1 {
                    self.walk(&path, depth - 1, out);
                }
                continue;
            }
            if !self.matches(&path) {
                continue;
            }
            let Ok(stat) = FileStat::of_path(&path) else { continue };
            if !stat.regular {
                continue;
            }
            let found = Found {
                path,
                stat,
                via_symlink: ft.is_symlink(),
            };
            match out.get(&stat.key) {
                Some(prev) if !prev.via_symlink || found.via_symlink => {}
                _ => {
                    out.insert(stat.key, found);
                }
            }
        }
    }
}

/// The directory a pattern's walk starts from (its components before the
/// first one with a glob character) and how many levels below it the
/// pattern can match.
fn walk_root(pattern: &str) -> (PathBuf, usize) {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    let mut root = PathBuf::new();
    let mut rest = Vec::new();
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if rest.is_empty() && !is_glob(&s) {
            root.push(c);
        } else if !matches!(c, Component::RootDir) {
            rest.push(s.into_owned());
        }
    }
    if rest.is_empty() {
        // A literal path: walk its directory, one level.
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        return (parent, 1);
    }
    let depth = if rest.iter().any(|s| s.contains("**")) {
        MAX_DEPTH
    } else {
        rest.len()
    };
    (root, depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_root_stops_at_first_glob_component() {
        assert_eq!(walk_root("/var/log/pods/**/*.log"), (PathBuf::from("/var/log/pods"), MAX_DEPTH));
        assert_eq!(walk_root("/var/log/*.log"), (PathBuf::from("/var/log"), 1));
        assert_eq!(walk_root("/var/log/app.log"), (PathBuf::from("/var/log"), 1));
        assert_eq!(walk_root("/a/*/b/*.log"), (PathBuf::from("/a"), 3));
    }

    #[test]
    fn scan_applies_includes_excludes_and_reads_symlinked_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("pods/ns_p_u/c")).unwrap();
        std::fs::create_dir_all(d.join("containers")).unwrap();
        std::fs::write(d.join("pods/ns_p_u/c/0.log"), b"x\n").unwrap();
        std::fs::write(d.join("pods/ns_p_u/c/0.log.20240101.gz"), b"x\n").unwrap();
        std::fs::write(d.join("pods/ns_p_u/c/skip.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink(d.join("pods/ns_p_u/c/0.log"), d.join("containers/p_ns_c-abc.log")).unwrap();
        let root = d.display().to_string();
        let g = Globs::new(
            &[format!("{root}/pods/**/*.log"), format!("{root}/containers/*.log")],
            &[format!("{root}/**/skip.log")],
        )
        .unwrap();
        let found = g.scan();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].path.ends_with("pods/ns_p_u/c/0.log"));
        assert!(!found[0].via_symlink);
    }
}
