//! The disk model: the live namespace and file contents (what processes see) and the durable
//! namespace and contents (what survives a power cut), plus the rules that move state from the
//! first to the second. No FUSE in here: [`crate::fs`] translates kernel requests into calls on
//! [`Model`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::Errno;

/// Inode number of the root directory (fixed by FUSE).
pub(crate) const ROOT: u64 = 1;
/// Inode number of the control file `/.powercut` (never listed, never durable).
pub(crate) const CONTROL: u64 = u64::MAX >> 1;
/// Name of the control file in the root directory.
pub const CONTROL_NAME: &str = ".powercut";

/// Torn writes happen at this granularity: a drive writes whole sectors or nothing.
const SECTOR: u64 = 512;
/// Copy granularity when an fsync moves dirty ranges to the durable object.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// What a process sees.
#[derive(Debug)]
struct LiveNode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    /// `None` once unlinked (an orphan, still readable through open handles).
    parent: Option<u64>,
    children: BTreeMap<OsString, u64>,
    /// Open handle on `live/<ino>` while the kernel has the file open (files only).
    file: Option<File>,
    open_count: u32,
    /// Byte ranges `[start, end)` changed since the last fsync/fdatasync of this file.
    dirty: BTreeMap<u64, u64>,
    /// Times of directories (files use their backing file's times).
    mtime: SystemTime,
}

/// What survives a power cut. File contents live in `durable/<ino>` (absent = empty).
#[derive(Clone, Debug)]
struct DurableNode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    children: BTreeMap<OsString, u64>,
}

/// Attributes the FUSE layer turns into a `FileAttr`.
#[derive(Clone, Debug)]
pub(crate) struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Counters of what the filesystem saw, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `write` requests served.
    pub writes: u64,
    /// `fsync` requests on files (not `fdatasync`).
    pub fsyncs: u64,
    /// `fdatasync` requests on files.
    pub fdatasyncs: u64,
    /// `fsync`/`fdatasync` on directories.
    pub dir_fsyncs: u64,
    /// Power cuts so far.
    pub cuts: u64,
    /// Un-synced sectors that survived cuts anyway (torn writes).
    pub torn_sectors: u64,
    /// Bytes of un-synced data thrown away by cuts (dirty ranges at the cut).
    pub lost_dirty_bytes: u64,
}

/// splitmix64: tiny, seedable, good enough to pick tear points.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug)]
pub(crate) struct Model {
    live_dir: PathBuf,
    durable_dir: PathBuf,
    live: HashMap<u64, LiveNode>,
    durable: HashMap<u64, DurableNode>,
    /// Open file handle -> inode.
    handles: HashMap<u64, u64>,
    next_ino: u64,
    next_fh: u64,
    /// Power is off: every request fails with `EIO` until [`Model::restore`].
    frozen: bool,
    torn: Option<Rng>,
    /// ext4-like: every fsync commits every pending namespace change (see `Options`).
    journaled_namespace: bool,
    pub(crate) stats: Stats,
}

fn eio(e: io::Error) -> Errno {
    Errno::from(e)
}

impl Model {
    /// An empty disk in `backing` (which must be empty or absent): `live/` and `durable/` are
    /// created inside it.
    pub(crate) fn new(
        backing: &Path,
        torn: Option<Rng>,
        journaled_namespace: bool,
    ) -> io::Result<Model> {
        let live_dir = backing.join("live");
        let durable_dir = backing.join("durable");
        std::fs::create_dir_all(&live_dir)?;
        std::fs::create_dir_all(&durable_dir)?;
        let now = SystemTime::now();
        let mut live = HashMap::new();
        live.insert(
            ROOT,
            LiveNode {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                parent: None,
                children: BTreeMap::new(),
                file: None,
                open_count: 0,
                dirty: BTreeMap::new(),
                mtime: now,
            },
        );
        let mut durable = HashMap::new();
        durable.insert(
            ROOT,
            DurableNode {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                children: BTreeMap::new(),
            },
        );
        Ok(Model {
            live_dir,
            durable_dir,
            live,
            durable,
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            frozen: false,
            torn,
            journaled_namespace,
            stats: Stats::default(),
        })
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Cut the power: from now on nothing changes, neither live nor durable state.
    pub(crate) fn freeze(&mut self) {
        if !self.frozen {
            self.frozen = true;
            self.stats.cuts += 1;
        }
    }

    fn alive(&self) -> Result<(), Errno> {
        if self.frozen { Err(Errno::EIO) } else { Ok(()) }
    }

    fn live_path(&self, ino: u64) -> PathBuf {
        self.live_dir.join(ino.to_string())
    }

    fn durable_path(&self, ino: u64) -> PathBuf {
        self.durable_dir.join(ino.to_string())
    }

    fn node(&self, ino: u64) -> Result<&LiveNode, Errno> {
        self.live.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut LiveNode, Errno> {
        self.live.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&LiveNode, Errno> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(n)
    }

    /// The backing file of `ino`, opened on demand and kept open while the kernel has it open.
    fn file(&mut self, ino: u64) -> Result<&File, Errno> {
        let path = self.live_path(ino);
        let n = self.node_mut(ino)?;
        if n.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        if n.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(eio)?;
            n.file = Some(f);
        }
        Ok(n.file.as_ref().expect("opened above"))
    }

    pub(crate) fn attr(&mut self, ino: u64) -> Result<Attr, Errno> {
        self.alive()?;
        let (kind, perm, uid, gid, mtime) = {
            let n = self.node(ino)?;
            (n.kind, n.perm, n.uid, n.gid, n.mtime)
        };
        match kind {
            Kind::Dir => Ok(Attr {
                ino,
                kind,
                size: 0,
                perm,
                uid,
                gid,
                atime: mtime,
                mtime,
                ctime: mtime,
            }),
            Kind::File => {
                let md = match &self.node(ino)?.file {
                    Some(f) => f.metadata(),
                    None => std::fs::metadata(self.live_path(ino)),
                }
                .map_err(eio)?;
                Ok(Attr {
                    ino,
                    kind,
                    size: md.len(),
                    perm,
                    uid,
                    gid,
                    atime: md.accessed().unwrap_or(SystemTime::UNIX_EPOCH),
                    mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ctime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            }
        }
    }

    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.alive()?;
        let ino = *self.dir(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    pub(crate) fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>, Errno> {
        self.alive()?;
        let d = self.dir(ino)?;
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (d.parent.unwrap_or(ROOT), Kind::Dir, OsString::from("..")),
        ];
        for (name, &child) in &d.children {
            let kind = self.live.get(&child).map(|c| c.kind).unwrap_or(Kind::File);
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    fn mark_dirty(&mut self, ino: u64, start: u64, end: u64) -> Result<(), Errno> {
        if start >= end {
            return Ok(());
        }
        let n = self.node_mut(ino)?;
        let (mut s, mut e) = (start, end);
        // Merge with every range that overlaps or touches [s, e).
        let overlapping: Vec<u64> = n
            .dirty
            .range(..=e)
            .filter(|&(_, &re)| re >= s)
            .map(|(&rs, _)| rs)
            .collect();
        for rs in overlapping {
            let re = n.dirty.remove(&rs).expect("listed above");
            s = s.min(rs);
            e = e.max(re);
        }
        n.dirty.insert(s, e);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<Attr, Errno> {
        self.alive()?;
        {
            let n = self.node_mut(ino)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let (Kind::Dir, Some(t)) = (n.kind, mtime) {
                n.mtime = t;
            }
        }
        if self.node(ino)?.kind == Kind::File {
            if let Some(new_len) = size {
                let f = self.file(ino)?;
                let old_len = f.metadata().map_err(eio)?.len();
                f.set_len(new_len).map_err(eio)?;
                // Both shrinking and growing change bytes in [min, max): after a shrink the
                // durable object still holds the old tail, which a later re-grow must zero.
                self.mark_dirty(ino, old_len.min(new_len), old_len.max(new_len))?;
            }
            if atime.is_some() || mtime.is_some() {
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(t);
                }
                if let Some(t) = mtime {
                    times = times.set_modified(t);
                }
                self.file(ino)?.set_times(times).map_err(eio)?;
            }
        }
        self.attr(ino)
    }

    fn new_node(&mut self, kind: Kind, parent: u64, perm: u16, uid: u32, gid: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.live.insert(
            ino,
            LiveNode {
                kind,
                perm,
                uid,
                gid,
                parent: Some(parent),
                children: BTreeMap::new(),
                file: None,
                open_count: 0,
                dirty: BTreeMap::new(),
                mtime: SystemTime::now(),
            },
        );
        ino
    }

    fn check_new_name(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if parent == ROOT && name == CONTROL_NAME {
            return Err(Errno::EEXIST);
        }
        if self.dir(parent)?.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn touch_dir(&mut self, ino: u64) {
        if let Some(d) = self.live.get_mut(&ino) {
            d.mtime = SystemTime::now();
        }
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        self.alive()?;
        self.check_new_name(parent, name)?;
        let ino = self.new_node(Kind::Dir, parent, perm, uid, gid);
        self.node_mut(parent)?.children.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        self.attr(ino)
    }

    /// Create and open a regular file; returns its attributes and a file handle.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64), Errno> {
        self.alive()?;
        self.check_new_name(parent, name)?;
        let ino = self.next_ino;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.live_path(ino))
            .map_err(eio)?;
        let ino2 = self.new_node(Kind::File, parent, perm, uid, gid);
        debug_assert_eq!(ino, ino2);
        self.node_mut(ino)?.file = Some(f);
        self.node_mut(parent)?.children.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        let fh = self.open(ino)?;
        Ok((self.attr(ino)?, fh))
    }

    pub(crate) fn open(&mut self, ino: u64) -> Result<u64, Errno> {
        self.alive()?;
        self.file(ino)?;
        self.node_mut(ino)?.open_count += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        Ok(fh)
    }

    pub(crate) fn release(&mut self, fh: u64) {
        // Runs even with the power off: it only drops our own bookkeeping.
        let Some(ino) = self.handles.remove(&fh) else {
            return;
        };
        let path = self.live_path(ino);
        if let Some(n) = self.live.get_mut(&ino) {
            n.open_count = n.open_count.saturating_sub(1);
            if n.open_count == 0 {
                n.file = None;
                if n.parent.is_none() && !self.frozen {
                    // The last handle on an unlinked file: its live bytes are gone for good.
                    let _ = std::fs::remove_file(path);
                    self.live.remove(&ino);
                }
            }
        }
    }

    pub(crate) fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.alive()?;
        let f = self.file(ino)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(eio(e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        self.alive()?;
        self.file(ino)?.write_all_at(data, offset).map_err(eio)?;
        self.mark_dirty(ino, offset, offset + data.len() as u64)?;
        self.stats.writes += 1;
        Ok(data.len())
    }

    fn durable_node_for(&mut self, ino: u64) -> Result<&mut DurableNode, Errno> {
        let n = self.node(ino)?;
        let fresh = DurableNode {
            kind: n.kind,
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            children: BTreeMap::new(),
        };
        Ok(self.durable.entry(ino).or_insert(fresh))
    }

    /// fsync (`datasync = false`) or fdatasync of a regular file: its data and size become
    /// durable; fsync also its mode and owner. Never its directory entry.
    pub(crate) fn sync_file(&mut self, ino: u64, datasync: bool) -> Result<(), Errno> {
        self.alive()?;
        if datasync {
            self.stats.fdatasyncs += 1;
        } else {
            self.stats.fsyncs += 1;
        }
        let dpath = self.durable_path(ino);
        let ranges: Vec<(u64, u64)> = self
            .node(ino)?
            .dirty
            .iter()
            .map(|(&s, &e)| (s, e))
            .collect();
        let f = self.file(ino)?;
        let len = f.metadata().map_err(eio)?.len();
        let obj = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&dpath)
            .map_err(eio)?;
        let mut buf = vec![0u8; COPY_CHUNK];
        for (start, end) in ranges {
            let end = end.min(len);
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(COPY_CHUNK);
                f.read_exact_at(&mut buf[..n], at).map_err(eio)?;
                obj.write_all_at(&buf[..n], at).map_err(eio)?;
                at += n as u64;
            }
        }
        obj.set_len(len).map_err(eio)?;
        let (perm, uid, gid) = {
            let n = self.node_mut(ino)?;
            n.dirty.clear();
            (n.perm, n.uid, n.gid)
        };
        let d = self.durable_node_for(ino)?;
        if !datasync {
            d.perm = perm;
            d.uid = uid;
            d.gid = gid;
        }
        if self.journaled_namespace {
            self.commit_namespace()?;
        }
        Ok(())
    }

    /// Journaled mode: make every directory's entries durable, as a journal commit would.
    fn commit_namespace(&mut self) -> Result<(), Errno> {
        let mut dirs = Vec::new();
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            dirs.push(d);
            for &c in self.dir(d)?.children.values() {
                if self.live.get(&c).is_some_and(|n| n.kind == Kind::Dir) {
                    stack.push(c);
                }
            }
        }
        for d in dirs {
            self.commit_dir(d)?;
        }
        Ok(())
    }

    /// fsync of a directory: its entries as they are now become durable, all at once. Entries of
    /// inodes that moved here from another directory are removed there (the rename commits as
    /// one transaction on the destination's fsync). Never the contents of the files.
    pub(crate) fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        self.alive()?;
        self.stats.dir_fsyncs += 1;
        if self.journaled_namespace {
            return self.commit_namespace();
        }
        self.commit_dir(ino)
    }

    fn commit_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let children = self.dir(ino)?.children.clone();
        let (perm, uid, gid) = {
            let n = self.node(ino)?;
            (n.perm, n.uid, n.gid)
        };
        let incoming: HashSet<u64> = children.values().copied().collect();
        for (&other, d) in self.durable.iter_mut() {
            if other != ino {
                d.children.retain(|_, c| !incoming.contains(c));
            }
        }
        for &child in children.values() {
            self.durable_node_for(child)?;
        }
        let d = self.durable_node_for(ino)?;
        d.children = children;
        d.perm = perm;
        d.uid = uid;
        d.gid = gid;
        Ok(())
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.alive()?;
        let ino = *self.dir(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        if self.node(ino)?.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.node_mut(parent)?.children.remove(name);
        self.touch_dir(parent);
        self.orphan(ino);
        Ok(())
    }

    /// `ino` lost its only name: drop its live bytes unless a handle still has it open.
    fn orphan(&mut self, ino: u64) {
        let path = self.live_path(ino);
        if let Some(n) = self.live.get_mut(&ino) {
            n.parent = None;
            if n.kind == Kind::Dir || n.open_count == 0 {
                self.live.remove(&ino);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.alive()?;
        let ino = *self.dir(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        if !self.dir(ino)?.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.node_mut(parent)?.children.remove(name);
        self.touch_dir(parent);
        self.orphan(ino);
        Ok(())
    }

    /// Is `maybe_child` inside `dir` (or `dir` itself)?
    fn is_within(&self, maybe_child: u64, dir: u64) -> bool {
        let mut at = Some(maybe_child);
        while let Some(i) = at {
            if i == dir {
                return true;
            }
            at = self.live.get(&i).and_then(|n| n.parent);
        }
        false
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        self.alive()?;
        let ino = *self.dir(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        self.dir(new_parent)?;
        if new_parent == ROOT && new_name == CONTROL_NAME {
            return Err(Errno::EPERM);
        }
        let kind = self.node(ino)?.kind;
        if kind == Kind::Dir && self.is_within(new_parent, ino) {
            return Err(Errno::EINVAL);
        }
        if let Some(&target) = self.dir(new_parent)?.children.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            let t = self.node(target)?;
            match (kind, t.kind) {
                (Kind::Dir, Kind::File) => return Err(Errno::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(Errno::EISDIR),
                (Kind::Dir, Kind::Dir) if !t.children.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
            self.node_mut(new_parent)?.children.remove(new_name);
            self.orphan(target);
        }
        self.node_mut(parent)?.children.remove(name);
        self.node_mut(new_parent)?
            .children
            .insert(new_name.to_owned(), ino);
        self.node_mut(ino)?.parent = Some(new_parent);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        Ok(())
    }

    /// Torn writes: each un-synced sector of `ino` independently reached the disk (or not)
    /// before the power went, whole, with its current contents; the file's durable size grows
    /// to cover a surviving sector past its end.
    fn tear(&mut self, ino: u64, rng: &mut Rng) -> io::Result<()> {
        let live = File::open(self.live_path(ino))?;
        let len = live.metadata()?.len();
        let obj = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.durable_path(ino))?;
        let mut buf = vec![0u8; SECTOR as usize];
        let mut sectors: Vec<u64> = Vec::new();
        for (&start, &end) in &self.live[&ino].dirty {
            let mut s = start / SECTOR;
            while s * SECTOR < end.min(len) {
                if sectors.last() != Some(&s) {
                    sectors.push(s);
                }
                s += 1;
            }
        }
        for s in sectors {
            if rng.below(2) == 0 {
                continue;
            }
            let at = s * SECTOR;
            let n = (len - at).min(SECTOR) as usize;
            live.read_exact_at(&mut buf[..n], at)?;
            obj.write_all_at(&buf[..n], at)?;
            self.stats.torn_sectors += 1;
        }
        Ok(())
    }

    /// After a cut: throw away everything not durable (optionally keeping random un-synced
    /// sectors) and make the live state a copy of the durable state.
    pub(crate) fn restore(&mut self) -> io::Result<()> {
        self.frozen = true;
        // Inodes reachable from the root through durable entries, with their durable parent.
        let mut reachable: HashMap<u64, Option<u64>> = HashMap::new();
        let mut stack = vec![(ROOT, None)];
        while let Some((ino, parent)) = stack.pop() {
            if reachable.insert(ino, parent).is_some() {
                continue;
            }
            if let Some(d) = self.durable.get(&ino) {
                stack.extend(d.children.values().map(|&c| (c, Some(ino))));
            }
        }
        for n in self.live.values() {
            self.stats.lost_dirty_bytes += n.dirty.iter().map(|(s, e)| e - s).sum::<u64>();
        }
        if let Some(mut rng) = self.torn.take() {
            let mut inos: Vec<u64> = self.live.keys().copied().collect();
            inos.sort_unstable();
            for ino in inos {
                if !reachable.contains_key(&ino) || self.live[&ino].dirty.is_empty() {
                    continue;
                }
                self.tear(ino, &mut rng)?;
            }
            self.torn = Some(rng);
        }
        self.durable.retain(|ino, _| reachable.contains_key(ino));
        for entry in std::fs::read_dir(&self.durable_dir)? {
            let entry = entry?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|ino| self.durable.contains_key(&ino));
            if !keep {
                std::fs::remove_file(entry.path())?;
            }
        }
        std::fs::remove_dir_all(&self.live_dir)?;
        std::fs::create_dir_all(&self.live_dir)?;
        self.live.clear();
        self.handles.clear();
        let now = SystemTime::now();
        for (&ino, d) in &self.durable {
            if d.kind == Kind::File {
                let dst = self.live_dir.join(ino.to_string());
                let src = self.durable_dir.join(ino.to_string());
                if src.exists() {
                    std::fs::copy(&src, &dst)?;
                } else {
                    File::create(&dst)?;
                }
            }
            self.live.insert(
                ino,
                LiveNode {
                    kind: d.kind,
                    perm: d.perm,
                    uid: d.uid,
                    gid: d.gid,
                    parent: reachable.get(&ino).copied().flatten(),
                    children: d.children.clone(),
                    file: None,
                    open_count: 0,
                    dirty: BTreeMap::new(),
                    mtime: now,
                },
            );
        }
        self.frozen = false;
        Ok(())
    }
}
