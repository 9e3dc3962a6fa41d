//! A FUSE filesystem that models a disk with a volatile write cache, and cuts its power on
//! command: the tool behind the gateway's power-loss durability proof.
//!
//! `kill -9` keeps the kernel's page cache, so a crash test never shows whether a program
//! fsyncs what it acknowledges. Here every change is visible at once but is kept only if an
//! fsync covered it before the cut; everything else is thrown away, like a power loss throws
//! away the page cache and the drive's cache.
//!
//! # The durability rule (strict POSIX, stricter than ext4 in practice)
//! - **File data and size**: `write`, `truncate`/`ftruncate` and size changes of a file become
//!   durable only when `fsync` or `fdatasync` *of that file* completes; both make all its data
//!   and its current size durable. `sync_file_range`, `close` and `msync`-less writes make
//!   nothing durable.
//! - **Mode and owner** (`chmod`, `chown`): durable by `fsync` of the file, not by
//!   `fdatasync` (which only covers what is needed to read the data back), and by the file's
//!   first appearance in the durable state. Timestamps are not modelled.
//! - **Directory entries**: `create`, `mkdir`, `unlink`, `rmdir` and `rename` change a
//!   directory; those changes become durable only when `fsync` *of that directory* completes,
//!   and then all of them at once (the directory's whole entry list as it is at that moment).
//!   **A new file's fsync does not make its name durable** — ext4 with a journal usually does in
//!   practice, but POSIX does not promise it and other filesystems do not do it; a program that
//!   wants a new file to survive must fsync the directory too. The same holds for new
//!   directories, at every level: `mkdir -p a/b` needs fsyncs of `a`'s parent and of `a`.
//! - **Renames** inside one directory are atomic: the old and new name change together at the
//!   directory's fsync. A rename *across* directories commits on the destination directory's
//!   fsync (which also removes the old entry from the durable source directory); fsyncing only
//!   the source directory drops the old entry, so the file is lost until the destination is
//!   fsynced too.
//! - **Durable, nameless data is lost**: a file that was fsynced but whose entry never became
//!   durable does not exist after the cut. A durable entry whose file was never fsynced comes
//!   back as an empty file.
//! - **Optional torn writes** ([`Options::torn_writes`]): at the cut, each un-synced 512-byte
//!   sector of a file whose name is durable independently survives or not (whole sectors, with
//!   their latest contents, in no particular order), and the file's size grows to cover a
//!   surviving sector past its durable end — a drive that wrote part of its cache, and
//!   size metadata that went with it (as on FAT or ext4 `data=writeback`). Adversarial on
//!   purpose: un-synced data may appear, half of it, in any mix.
//!
//! [`Options::journaled_namespace`] switches to a lenient, ext4-like rule instead: any fsync
//! commits every pending directory change, everywhere.
//!
//! Hard links, symlinks, device nodes and xattrs are not supported (they return errors).
//!
//! # Design
//! The backing directory holds `live/<ino>` (what processes read and write now) and
//! `durable/<ino>` (what a cut keeps). The namespaces of both live in memory. An fsync copies
//! the file's dirty byte ranges from `live/` to `durable/`; a directory fsync copies the
//! directory's entry list to the durable namespace. A **cut** freezes the filesystem: from that
//! instant every request fails with `EIO`, so nothing more can become durable (the program
//! under test keeps running, sees I/O errors, and is killed by the test). **Restoring power**
//! unmounts, throws away everything not durable, rebuilds `live/` as a copy of `durable/`, and
//! mounts again on the same path with cold kernel caches.
//!
//! Cut from the test with [`PowerCutMount::cut_power`] / [`PowerCutMount::power_cut`], or from
//! any process by writing `cut` to the hidden control file `<mount>/.powercut` (reading it
//! says `on` or `cut`); then [`PowerCutMount::restore_power`] brings the disk back.
//!
//! # Guarantees
//! - What was fsynced before the cut is there after it, byte for byte, unless torn writes
//!   overwrote it with newer un-synced sectors; nothing that was not covered by an fsync is
//!   there, except torn sectors when torn writes are on.
//! - Reads before the cut see every write, synced or not.
//! - The filesystem only runs where FUSE does: [`fuse_available`] says why not, and
//!   [`require_fuse`] turns that into a test failure when `CI` is set.
//!
//! # Non-guarantees
//! - Not a performance model: fsync costs a copy of the dirty ranges, nothing more.
//! - Not crash-safe itself: the durable state lives in this process; if the test process dies,
//!   so does the disk.

mod fs;
mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

pub use model::{CONTROL_NAME, Rng, Stats};

use crate::fs::{PowerCutFs, lock};
use crate::model::Model;

/// How long an unmount may take before the mount is declared stuck (a handle still open on it).
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// How the disk behaves at a cut.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep random un-synced sectors at a cut (see the crate docs).
    pub torn_writes: bool,
    /// Seed for tear points (only used with `torn_writes`).
    pub seed: u64,
    /// Lenient, ext4-like namespace: any fsync or fdatasync (of a file or a directory) also
    /// makes every pending directory change durable, as a journal commit does. Off by default
    /// (the strict rule above); on, it isolates a program's data-sync discipline from its
    /// directory-sync discipline.
    pub journaled_namespace: bool,
}

/// A mounted power-cut filesystem. Dropping it unmounts (its state is gone then).
#[derive(Debug)]
pub struct PowerCutMount {
    mountpoint: PathBuf,
    model: Arc<Mutex<Model>>,
    session: Option<BackgroundSession>,
}

impl PowerCutMount {
    /// Mount an empty disk at `mountpoint` (an existing empty directory), keeping its bytes in
    /// `backing` (created if missing; must not be inside the mount).
    pub fn mount(backing: &Path, mountpoint: &Path, options: Options) -> io::Result<Self> {
        let torn = options.torn_writes.then_some(Rng(options.seed));
        let model = Arc::new(Mutex::new(Model::new(
            backing,
            torn,
            options.journaled_namespace,
        )?));
        let mut m = PowerCutMount {
            mountpoint: mountpoint.to_path_buf(),
            model,
            session: None,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
            MountOption::RW,
        ];
        let fs = PowerCutFs {
            model: self.model.clone(),
        };
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        Ok(())
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The control file: write `cut` to it to cut the power from another process.
    pub fn control_file(&self) -> PathBuf {
        self.mountpoint.join(CONTROL_NAME)
    }

    /// Cut the power now: nothing more becomes durable and every request fails with `EIO`
    /// until [`PowerCutMount::restore_power`].
    pub fn cut_power(&self) {
        lock(&self.model).freeze();
    }

    /// Is the power off (cut by [`PowerCutMount::cut_power`] or through the control file)?
    pub fn is_cut(&self) -> bool {
        lock(&self.model).is_frozen()
    }

    /// Bring the disk back after a cut (cutting first if the power is still on): unmount, throw
    /// away everything not durable, mount again with only the durable state. Every process
    /// must have closed its files on the mount (kill it first), or this fails after a timeout.
    pub fn restore_power(&mut self) -> io::Result<()> {
        self.cut_power();
        self.unmount()?;
        lock(&self.model).restore()?;
        self.spawn()
    }

    /// [`PowerCutMount::cut_power`] then [`PowerCutMount::restore_power`].
    pub fn power_cut(&mut self) -> io::Result<()> {
        self.restore_power()
    }

    /// What the filesystem saw so far.
    pub fn stats(&self) -> Stats {
        lock(&self.model).stats
    }

    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // The unmount is lazy (MNT_DETACH): the session ends only once the last open file on
        // the mount is closed. Wait on another thread so a leaked handle fails the test instead
        // of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.umount_and_join());
        });
        match rx.recv_timeout(UNMOUNT_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(io::Error::other(format!(
                "{} still busy {UNMOUNT_TIMEOUT:?} after unmounting: a process keeps a file open",
                self.mountpoint.display()
            ))),
        }
    }
}

impl Drop for PowerCutMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("powercut: unmount of {}: {e}", self.mountpoint.display());
        }
    }
}

/// `None` if this machine can mount FUSE filesystems, else why not.
pub fn fuse_available() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .any(|dir| dir.join("fusermount3").exists());
    if !found {
        return Some("fusermount3 not found (install fuse3)".into());
    }
    None
}

/// For tests: `true` if FUSE is usable. Without it, panics when the `CI` environment variable
/// is set (a skipped durability proof must not look like a passing one), and otherwise records
/// the test as not run for real ([`test_peers::missing`]) and returns `false`.
pub fn require_fuse(test: &str) -> bool {
    let Some(reason) = fuse_available() else {
        return true;
    };
    test_peers::missing(
        test,
        &format!("FUSE is unavailable ({reason})"),
        "as root: apt-get install fuse3 (and /dev/fuse must exist)",
    );
    false
}

/// A number from the environment variable `name` (a trial count, say); panics if it is set but
/// is not a number, so a typo never silently runs the default.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// The seed of a randomized run: `POWERCUT_SEED` to replay one (tests print theirs), else the
/// clock.
pub fn seed() -> u64 {
    env_u64("POWERCUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos() as u64
    })
}
