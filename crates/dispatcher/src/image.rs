//! Worker images without a registry: a `FROM scratch` build context made
//! from files on this host.
//!
//! No base image can be pulled here, so an image is assembled from
//! executables (with the shared libraries `ldd` names for them, and the
//! dynamic loader), a few `/etc` files naming a non-root user, and a
//! writable `/tmp`. [`DockerEngine::build_image`](crate::DockerEngine::build_image)
//! builds the context this module produces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::DispatchError;

/// The uid and gid of the unprivileged user in images built here.
pub const WORKER_UID: u32 = 65532;

#[derive(Debug, Clone)]
enum Entry {
    File { source: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    OwnedDir { mode: u32, uid: u32 },
    Symlink { target: String },
}

/// A build context: a root filesystem and the Dockerfile that copies it.
#[derive(Debug, Clone)]
pub struct ImageContext {
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    env: Vec<(String, String)>,
}

fn context_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DispatchError {
    let what = what.into();
    move |source| DispatchError::ContextFailed { what, source }
}

impl Default for ImageContext {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageContext {
    /// An empty root filesystem with `/etc/passwd` and `/etc/group` naming
    /// the `berth` user (uid 65532), a sticky world-writable `/tmp`, and
    /// `/home/berth` owned by nobody in particular but writable.
    pub fn new() -> Self {
        let mut context = Self { entries: BTreeMap::new(), entrypoint: Vec::new(), env: Vec::new() };
        let passwd = format!(
            "root:x:0:0:root:/root:/sbin/nologin\nberth:x:{WORKER_UID}:{WORKER_UID}:berth:/home/berth:/sbin/nologin\n"
        );
        let group = format!("root:x:0:\nberth:x:{WORKER_UID}:\n");
        context.add_bytes("etc/passwd", passwd.into_bytes(), 0o644);
        context.add_bytes("etc/group", group.into_bytes(), 0o644);
        context.entries.insert("tmp".to_owned(), Entry::Dir { mode: 0o1777 });
        context.entries.insert("home/berth".to_owned(), Entry::Dir { mode: 0o1777 });
        // The clone cache's mount point: a new volume mounted here takes
        // this owner, so the refresh (as the worker's user) can fill it.
        // Not under a top-level `/berth`: with one, the Claude Code CLI
        // (2.1.332) leaves its working directory out of the model's prompt
        // (found by `e2e::claude`).
        context.entries.insert("srv".to_owned(), Entry::Dir { mode: 0o755 });
        context
            .entries
            .insert("srv/clone-cache".to_owned(), Entry::OwnedDir { mode: 0o755, uid: WORKER_UID });
        context.env.push(("HOME".to_owned(), "/home/berth".to_owned()));
        context
    }

    /// Adds a host file at `in_image` (an absolute or root-relative path).
    pub fn add_file(&mut self, source: impl Into<PathBuf>, in_image: &str, mode: u32) -> &mut Self {
        self.entries.insert(normalize(in_image), Entry::File { source: source.into(), mode });
        self
    }

    /// Adds literal contents at `in_image`.
    pub fn add_bytes(&mut self, in_image: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        self.entries.insert(normalize(in_image), Entry::Bytes { data, mode });
        self
    }

    /// Adds an executable at `in_image`, and every shared library `ldd`
    /// lists for it at the path it has on this host.
    ///
    /// # Errors
    /// When the file is missing or `ldd` cannot be run.
    pub fn add_executable(&mut self, source: &Path, in_image: &str) -> Result<&mut Self, DispatchError> {
        std::fs::metadata(source).map_err(context_failed(format!("read {}", source.display())))?;
        for library in shared_libraries(source)? {
            let path = library.to_string_lossy().into_owned();
            self.add_file(library, &path, 0o755);
        }
        Ok(self.add_file(source, in_image, 0o755))
    }

    /// Sets the image's entrypoint.
    pub fn entrypoint(&mut self, entrypoint: &[&str]) -> &mut Self {
        self.entrypoint = entrypoint.iter().map(|part| (*part).to_owned()).collect();
        self
    }

    /// Adds an environment variable to the image.
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The Dockerfile of this context.
    pub fn dockerfile(&self) -> String {
        let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
        // COPY makes everything root's; what the worker's user must own is
        // copied apart, each to its own path: `COPY --chown owned/ /` would
        // hand `/` itself to the worker's user.
        for (path, entry) in &self.entries {
            if let Entry::OwnedDir { uid, .. } = entry {
                dockerfile.push_str(&format!("COPY --chown={uid}:{uid} owned/{path}/ /{path}/\n"));
            }
        }
        for (name, value) in &self.env {
            dockerfile.push_str(&format!("ENV {name}={}\n", serde_json::Value::String(value.clone())));
        }
        dockerfile.push_str(&format!("USER {WORKER_UID}:{WORKER_UID}\nWORKDIR /home/berth\n"));
        if !self.entrypoint.is_empty() {
            let entrypoint = serde_json::to_string(&self.entrypoint).expect("strings always serialize");
            dockerfile.push_str(&format!("ENTRYPOINT {entrypoint}\n"));
        }
        dockerfile
    }

    /// The context as a tar archive, ready for the engine's build.
    ///
    /// # Errors
    /// When a host file cannot be read.
    pub fn to_tar(&self) -> Result<Vec<u8>, DispatchError> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut append = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, owner: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(u64::from(owner));
            header.set_gid(u64::from(owner));
            header.set_size(data.len() as u64);
            header.set_mtime(0);
            builder
                .append_data(&mut header, path, data)
                .map_err(context_failed(format!("add {path} to the context")))
        };
        append("Dockerfile", self.dockerfile().as_bytes(), 0o644, tar::EntryType::Regular, 0)?;
        for (path, entry) in &self.entries {
            let in_tar = match entry {
                Entry::OwnedDir { .. } => format!("owned/{path}"),
                _ => format!("rootfs/{path}"),
            };
            match entry {
                Entry::Dir { mode } => append(&in_tar, &[], *mode, tar::EntryType::Directory, 0)?,
                Entry::OwnedDir { mode, uid } => {
                    append(&in_tar, &[], *mode, tar::EntryType::Directory, *uid)?
                }
                // Appended below, once `append` no longer borrows the builder.
                Entry::Symlink { .. } => {}
                Entry::Bytes { data, mode } => append(&in_tar, data, *mode, tar::EntryType::Regular, 0)?,
                Entry::File { source, mode } => {
                    let data = std::fs::read(source)
                        .map_err(context_failed(format!("read {}", source.display())))?;
                    append(&in_tar, &data, *mode, tar::EntryType::Regular, 0)?;
                }
            }
        }
        for (path, entry) in &self.entries {
            if let Entry::Symlink { target } = entry {
                let in_tar = format!("rootfs/{path}");
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                header.set_mtime(0);
                builder
                    .append_link(&mut header, &in_tar, target)
                    .map_err(context_failed(format!("add the link {in_tar} to the context")))?;
            }
        }
        builder.into_inner().map_err(context_failed("finish the context archive"))
    }

    /// Adds a symbolic link at `in_image` pointing to `target` (absolute, or
    /// relative to the link's directory).
    pub fn add_symlink(&mut self, in_image: &str, target: &str) -> &mut Self {
        self.entries.insert(normalize(in_image), Entry::Symlink { target: target.to_owned() });
        self
    }

    /// Adds a host directory tree at `in_image`: its directories, regular
    /// files (with their modes) and symbolic links. Other file types are skipped.
    ///
    /// # Errors
    /// When the tree cannot be read.
    pub fn add_tree(&mut self, source: &Path, in_image: &str) -> Result<&mut Self, DispatchError> {
        use std::os::unix::fs::PermissionsExt;
        let read_failed = |path: &Path| context_failed(format!("read {}", path.display()));
        let root = normalize(in_image);
        let metadata = std::fs::metadata(source).map_err(read_failed(source))?;
        self.entries.insert(root.clone(), Entry::Dir { mode: metadata.permissions().mode() & 0o7777 });
        let mut pending = vec![(source.to_owned(), root)];
        while let Some((dir, in_image_dir)) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(read_failed(&dir))? {
                let entry = entry.map_err(read_failed(&dir))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let target_path = format!("{in_image_dir}/{name}");
                let metadata = std::fs::symlink_metadata(&path).map_err(read_failed(&path))?;
                let mode = metadata.permissions().mode() & 0o7777;
                if metadata.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).map_err(read_failed(&path))?;
                    self.entries.insert(
                        target_path,
                        Entry::Symlink { target: target.to_string_lossy().into_owned() },
                    );
                } else if metadata.is_dir() {
                    self.entries.insert(target_path.clone(), Entry::Dir { mode });
                    pending.push((path, target_path));
                } else if metadata.is_file() {
                    self.entries.insert(target_path, Entry::File { source: path, mode });
                }
            }
        }
        Ok(self)
    }

    /// Adds this host's git so that clones, fetches and pushes work in the
    /// image: the `git` executable (with its libraries) in git's exec path and
    /// as `/usr/bin/git`, the built-ins git runs as separate programs
    /// (`git-upload-pack`, `git-receive-pack`, `git-upload-archive`), its
    /// HTTP(S) transport helper when present, and its templates directory.
    ///
    /// # Errors
    /// When git is not installed here or its files cannot be read.
    pub fn add_git(&mut self) -> Result<&mut Self, DispatchError> {
        let output =
            Command::new("git").arg("--exec-path").output().map_err(context_failed("run git --exec-path"))?;
        let exec_path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        let in_exec_path = |name: &str| format!("{}/{name}", exec_path.display());
        self.add_executable(&exec_path.join("git"), &in_exec_path("git"))?;
        if Path::new("/usr/bin/git") != exec_path.join("git") {
            self.add_symlink("/usr/bin/git", &in_exec_path("git"));
        }
        for builtin in ["git-upload-pack", "git-receive-pack", "git-upload-archive"] {
            self.add_symlink(&in_exec_path(builtin), "git");
        }
        let remote_http = exec_path.join("git-remote-http");
        if remote_http.exists() {
            self.add_executable(&remote_http, &in_exec_path("git-remote-http"))?;
            for scheme in ["https", "ftp", "ftps"] {
                self.add_symlink(&in_exec_path(&format!("git-remote-{scheme}")), "git-remote-http");
            }
        }
        // The templates live at <prefix>/share/git-core/templates for an exec
        // path of <prefix>/libexec/git-core (or Debian's <prefix>/lib/git-core).
        let templates = exec_path
            .parent()
            .and_then(Path::parent)
            .map(|prefix| prefix.join("share/git-core/templates"))
            .filter(|templates| templates.is_dir());
        if let Some(templates) = templates {
            let in_image = templates.to_string_lossy().into_owned();
            self.add_tree(&templates, &in_image)?;
        }
        Ok(self)
    }
}

fn normalize(in_image: &str) -> String {
    in_image.trim_start_matches('/').to_owned()
}

/// The shared libraries (and the loader) an executable needs, from `ldd`.
/// A static executable needs none.
fn shared_libraries(executable: &Path) -> Result<Vec<PathBuf>, DispatchError> {
    let output = Command::new("ldd")
        .arg(executable)
        .output()
        .map_err(context_failed(format!("run ldd on {}", executable.display())))?;
    // ldd exits non-zero for "not a dynamic executable": nothing to add.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x..)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x..)`; the vDSO has no file.
pub(crate) fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, target)) => target.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}
