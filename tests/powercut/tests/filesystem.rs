//! The power-cut filesystem keeps exactly what its rule says (see the crate docs): synced file
//! data, directory entries whose directory was fsynced, and nothing else.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use powercut::{Options, PowerCutMount};

struct Disk {
    mount: PowerCutMount,
    _dir: tempfile::TempDir,
}

impl Disk {
    fn p(&self, rel: &str) -> PathBuf {
        self.mount.path().join(rel)
    }
}

/// A fresh mounted disk, or `None` (after a note) where FUSE is unavailable outside CI.
fn disk(test: &str, options: Options) -> Option<Disk> {
    if !powercut::require_fuse(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mount = PowerCutMount::mount(&dir.path().join("backing"), &mnt, options).unwrap();
    Some(Disk { mount, _dir: dir })
}

fn fsync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Create `rel` with `data`, fsync the file and the root directory: fully durable.
fn durable_file(d: &Disk, rel: &str, data: &[u8]) {
    let mut f = File::create(d.p(rel)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    fsync_dir(d.p(rel).parent().unwrap());
}

#[test]
fn written_then_fsynced_data_survives_a_cut() {
    let Some(mut d) = disk(
        "written_then_fsynced_data_survives_a_cut",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "a", b"hello durable world");
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("a")).unwrap(), b"hello durable world");
}

#[test]
fn written_but_not_synced_data_is_lost_at_a_cut() {
    let Some(mut d) = disk(
        "written_but_not_synced_data_is_lost_at_a_cut",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "a", b"synced");
    let f = OpenOptions::new().write(true).open(d.p("a")).unwrap();
    f.write_all_at(b"SYNCED and then some more", 0).unwrap();
    drop(f); // close() is not a sync
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("a")).unwrap(), b"synced");
}

#[test]
fn reads_see_unsynced_data_before_the_cut() {
    let Some(mut d) = disk("reads_see_unsynced_data_before_the_cut", Options::default()) else {
        return;
    };
    fs::write(d.p("a"), b"not yet durable").unwrap();
    fs::create_dir(d.p("dir")).unwrap();
    fs::write(d.p("dir/b"), b"nested").unwrap();
    assert_eq!(fs::read(d.p("a")).unwrap(), b"not yet durable");
    assert_eq!(fs::read(d.p("dir/b")).unwrap(), b"nested");
    let mut names: Vec<String> = fs::read_dir(d.mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "dir"], "the control file is never listed");
    d.mount.power_cut().unwrap();
    assert!(!d.p("a").exists());
    assert!(!d.p("dir").exists());
}

#[test]
fn a_new_files_fsync_does_not_make_its_name_durable() {
    let Some(mut d) = disk(
        "a_new_files_fsync_does_not_make_its_name_durable",
        Options::default(),
    ) else {
        return;
    };
    let mut f = File::create(d.p("orphan")).unwrap();
    f.write_all(b"data without a durable name").unwrap();
    f.sync_all().unwrap();
    drop(f);
    d.mount.power_cut().unwrap();
    assert_eq!(
        fs::metadata(d.p("orphan")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_durable_name_without_synced_data_comes_back_empty() {
    let Some(mut d) = disk(
        "a_durable_name_without_synced_data_comes_back_empty",
        Options::default(),
    ) else {
        return;
    };
    fs::write(d.p("empty"), b"never synced").unwrap();
    fsync_dir(d.mount.path());
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("empty")).unwrap(), b"");
}

#[test]
fn new_directories_need_an_fsync_of_each_parent() {
    let Some(mut d) = disk(
        "new_directories_need_an_fsync_of_each_parent",
        Options::default(),
    ) else {
        return;
    };
    fs::create_dir_all(d.p("a/b")).unwrap();
    durable_file(&d, "a/b/f", b"deep"); // fsyncs a/b only
    fsync_dir(d.mount.path()); // "a" is durable, but a's entry "b" is not
    d.mount.power_cut().unwrap();
    assert!(d.p("a").is_dir());
    assert!(!d.p("a/b").exists());

    fs::create_dir_all(d.p("a/b")).unwrap();
    durable_file(&d, "a/b/f", b"deep");
    fsync_dir(&d.p("a"));
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("a/b/f")).unwrap(), b"deep");
}

#[test]
fn unlink_is_undone_by_a_cut_unless_the_directory_was_fsynced() {
    let Some(mut d) = disk(
        "unlink_is_undone_by_a_cut_unless_the_directory_was_fsynced",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "keep", b"k");
    durable_file(&d, "gone", b"g");
    fs::remove_file(d.p("keep")).unwrap();
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("keep")).unwrap(), b"k", "unlink not durable");

    fs::remove_file(d.p("gone")).unwrap();
    fsync_dir(d.mount.path());
    d.mount.power_cut().unwrap();
    assert!(
        !d.p("gone").exists(),
        "unlink made durable by the dir fsync"
    );
    assert_eq!(fs::read(d.p("keep")).unwrap(), b"k");
}

#[test]
fn rmdir_and_mkdir_follow_the_directory_rule() {
    let Some(mut d) = disk(
        "rmdir_and_mkdir_follow_the_directory_rule",
        Options::default(),
    ) else {
        return;
    };
    fs::create_dir(d.p("old")).unwrap();
    fsync_dir(d.mount.path());
    fs::remove_dir(d.p("old")).unwrap();
    fs::create_dir(d.p("new")).unwrap();
    d.mount.power_cut().unwrap();
    assert!(d.p("old").is_dir());
    assert!(!d.p("new").exists());
}

#[test]
fn rename_in_one_directory_is_atomic_and_durable_on_its_fsync() {
    let Some(mut d) = disk(
        "rename_in_one_directory_is_atomic_and_durable_on_its_fsync",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "target", b"old contents");
    // The classic safe replace: write tmp, fsync it, rename over target, fsync the dir.
    let mut f = File::create(d.p("target.tmp")).unwrap();
    f.write_all(b"new contents").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(d.p("target.tmp"), d.p("target")).unwrap();
    assert_eq!(fs::read(d.p("target")).unwrap(), b"new contents");
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("target")).unwrap(), b"old contents");
    assert!(!d.p("target.tmp").exists());

    let mut f = File::create(d.p("target.tmp")).unwrap();
    f.write_all(b"new contents").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(d.p("target.tmp"), d.p("target")).unwrap();
    fsync_dir(d.mount.path());
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("target")).unwrap(), b"new contents");
    assert!(!d.p("target.tmp").exists());
}

#[test]
fn rename_across_directories_commits_on_the_destinations_fsync() {
    let Some(mut d) = disk(
        "rename_across_directories_commits_on_the_destinations_fsync",
        Options::default(),
    ) else {
        return;
    };
    fs::create_dir(d.p("src")).unwrap();
    fs::create_dir(d.p("dst")).unwrap();
    fsync_dir(d.mount.path());
    durable_file(&d, "src/f", b"moving");
    fs::rename(d.p("src/f"), d.p("dst/f")).unwrap();
    fsync_dir(&d.p("dst"));
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("dst/f")).unwrap(), b"moving");
    assert!(
        !d.p("src/f").exists(),
        "one transaction: the old name is gone"
    );

    // Fsyncing only the source drops the old name; the file is lost until dst is fsynced.
    fs::rename(d.p("dst/f"), d.p("src/f")).unwrap();
    fsync_dir(&d.p("dst"));
    fs::rename(d.p("src/f"), d.p("dst/g")).unwrap();
    fsync_dir(&d.p("src"));
    d.mount.power_cut().unwrap();
    assert!(!d.p("dst/g").exists());
    assert!(!d.p("src/f").exists());
    assert!(!d.p("dst/f").exists());
}

#[test]
fn truncation_is_durable_only_after_fsync() {
    let Some(mut d) = disk("truncation_is_durable_only_after_fsync", Options::default()) else {
        return;
    };
    durable_file(&d, "t", b"0123456789");
    let f = OpenOptions::new().write(true).open(d.p("t")).unwrap();
    f.set_len(4).unwrap();
    drop(f);
    assert_eq!(fs::read(d.p("t")).unwrap(), b"0123");
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("t")).unwrap(), b"0123456789");

    // Shrink then grow again: the regrown tail is zeros, also durably.
    let f = OpenOptions::new().write(true).open(d.p("t")).unwrap();
    f.set_len(4).unwrap();
    f.set_len(6).unwrap();
    f.sync_data().unwrap();
    drop(f);
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("t")).unwrap(), b"0123\0\0");
}

#[test]
fn fdatasync_keeps_data_and_size_but_only_fsync_keeps_the_mode() {
    let Some(mut d) = disk(
        "fdatasync_keeps_data_and_size_but_only_fsync_keeps_the_mode",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "m", b"a");
    fs::set_permissions(d.p("m"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut f = OpenOptions::new().append(true).open(d.p("m")).unwrap();
    f.write_all(b"bc").unwrap();
    f.sync_data().unwrap();
    drop(f);
    let mode_before = fs::metadata(d.p("m")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode_before, 0o600);
    d.mount.power_cut().unwrap();
    assert_eq!(
        fs::read(d.p("m")).unwrap(),
        b"abc",
        "fdatasync: data and size"
    );
    assert_ne!(
        fs::metadata(d.p("m")).unwrap().permissions().mode() & 0o777,
        0o600,
        "fdatasync did not make the chmod durable"
    );

    fs::set_permissions(d.p("m"), fs::Permissions::from_mode(0o600)).unwrap();
    File::open(d.p("m")).unwrap().sync_all().unwrap();
    d.mount.power_cut().unwrap();
    assert_eq!(
        fs::metadata(d.p("m")).unwrap().permissions().mode() & 0o777,
        0o600,
        "fsync made the chmod durable"
    );
}

#[test]
fn only_the_synced_version_of_overwritten_data_survives() {
    let Some(mut d) = disk(
        "only_the_synced_version_of_overwritten_data_survives",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "log", b"");
    let f = OpenOptions::new().write(true).open(d.p("log")).unwrap();
    f.write_all_at(b"first-", 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"second", 6).unwrap();
    f.write_all_at(b"FIRST", 0).unwrap();
    drop(f);
    d.mount.power_cut().unwrap();
    assert_eq!(fs::read(d.p("log")).unwrap(), b"first-");
}

#[test]
fn the_control_file_cuts_power_for_every_process() {
    let Some(mut d) = disk(
        "the_control_file_cuts_power_for_every_process",
        Options::default(),
    ) else {
        return;
    };
    durable_file(&d, "x", b"kept");
    fs::write(d.p("y"), b"lost").unwrap();
    assert_eq!(fs::read(d.mount.control_file()).unwrap(), b"on\n");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo cut > {}", d.mount.control_file().display()))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(d.mount.is_cut());
    let err = fs::write(d.p("z"), b"after the cut").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    d.mount.restore_power().unwrap();
    assert!(!d.mount.is_cut());
    assert_eq!(fs::read(d.p("x")).unwrap(), b"kept");
    assert!(!d.p("y").exists());
    assert!(!d.p("z").exists());
    assert_eq!(d.mount.stats().cuts, 1);
}

#[test]
fn torn_writes_keep_random_whole_unsynced_sectors() {
    let Some(mut d) = disk(
        "torn_writes_keep_random_whole_unsynced_sectors",
        Options {
            torn_writes: true,
            seed: 7,
            journaled_namespace: false,
        },
    ) else {
        return;
    };
    durable_file(&d, "w", &[b'o'; 2048]);
    let mut saw_new = false;
    let mut saw_old = false;
    let mut durable_len = 2048;
    for round in 0..8u8 {
        let f = OpenOptions::new().write(true).open(d.p("w")).unwrap();
        let new = vec![b'a' + round; 4096];
        f.write_all_at(&new, 0).unwrap();
        drop(f);
        d.mount.power_cut().unwrap();
        let got = fs::read(d.p("w")).unwrap();
        assert!(
            got.len() % 512 == 0 && got.len() >= 2048,
            "size {}",
            got.len()
        );
        for (i, sector) in got.chunks(512).enumerate() {
            let first = sector[0];
            assert!(
                sector.iter().all(|&b| b == first),
                "sector {i} is not whole"
            );
            if first == b'a' + round {
                saw_new = true;
            } else {
                assert!(
                    i < durable_len / 512 || first == 0,
                    "sector {i} past the durable end is new or a hole"
                );
                saw_old = true;
            }
        }
        // Make this round's result the durable base of the next.
        File::open(d.p("w")).unwrap().sync_all().unwrap();
        durable_len = got.len();
    }
    assert!(
        saw_new && saw_old,
        "8 cuts and never a mix of torn and lost sectors"
    );
    assert!(d.mount.stats().torn_sectors > 0);
}

#[test]
fn journaled_namespace_makes_a_new_files_name_durable_with_its_fsync() {
    let Some(mut d) = disk(
        "journaled_namespace_makes_a_new_files_name_durable_with_its_fsync",
        Options {
            journaled_namespace: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    fs::create_dir_all(d.p("a/b")).unwrap();
    fs::write(d.p("a/unsynced"), b"data").unwrap();
    let mut f = File::create(d.p("a/b/f")).unwrap();
    f.write_all(b"journaled").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs::write(d.p("a/late"), b"after the last fsync").unwrap();
    d.mount.power_cut().unwrap();
    assert!(!d.p("a/late").exists());
    assert_eq!(fs::read(d.p("a/b/f")).unwrap(), b"journaled");
    assert_eq!(
        fs::read(d.p("a/unsynced")).unwrap(),
        b"",
        "name yes, data no"
    );
}
