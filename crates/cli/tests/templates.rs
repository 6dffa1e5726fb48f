//! Containers started from VM templates: distinct machines from one saved VM, the key that
//! keeps a template from being used where it does not fit, damaged templates, and races.
//!
//! Needs `BULKHEAD_TEST_KERNEL` and `BULKHEAD_GUEST` (set by `scripts/test`).

mod common;

use std::process::Command;

use common::{text, Env};

fn start_path(env: &Env, name: &str) -> String {
    env.inspect(name)["StartPath"].as_str().unwrap_or("").to_owned()
}

fn template_keys(env: &Env) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["template", "ls", "--format", "json"])).unwrap();
    list.as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap().to_owned()).collect()
}

/// A second image: busybox plus a marker file.
fn import_marked(env: &Env) {
    let dir = env.dir.path().join("marked");
    std::fs::create_dir_all(&dir).unwrap();
    let status =
        Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(common::busybox_tarball()).status().unwrap();
    assert!(status.success());
    std::fs::write(dir.join("etc/marker"), "second image\n").unwrap();
    let tarball = env.dir.path().join("marked.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    env.ok(&["import", tarball.to_str().unwrap(), "marked"]);
}

#[test]
fn restored_containers_are_distinct_machines() {
    let env = Env::new();
    import_marked(&env);
    env.ok(&["run", "-d", "--name", "one", "busybox", "sleep", "100000"]);
    env.ok(&["run", "-d", "--name", "two", "marked", "sleep", "100000"]);
    let (a, b) = (start_path(&env, "one"), start_path(&env, "two"));
    assert!(a.starts_with("template ") && a.contains("(image "), "{a}");
    assert_eq!(a[..21], b[..21], "both restored from the one template: {a} / {b}");
    assert_ne!(a, b, "each from the template's specialisation for its image");
    assert_eq!(template_keys(&env).len(), 1);

    // Each sees its own image.
    assert_ne!(env.run(&["exec", "one", "test", "-e", "/etc/marker"]).status.code(), Some(0));
    assert_eq!(env.ok(&["exec", "two", "cat", "/etc/marker"]), "second image\n");
    // A file written in one is absent from the other.
    env.ok(&["exec", "one", "sh", "-c", "echo mine > /tmp/only-here"]);
    assert_ne!(env.run(&["exec", "two", "test", "-e", "/tmp/only-here"]).status.code(), Some(0));

    let identity =
        "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1; hostname; date +%Y";
    let (x, y) =
        (env.ok(&["exec", "one", "sh", "-c", identity]), env.ok(&["exec", "two", "sh", "-c", identity]));
    let (x, y): (Vec<&str>, Vec<&str>) = (x.lines().collect(), y.lines().collect());
    assert_eq!((x.len(), y.len()), (4, 4), "{x:?} {y:?}");
    for (what, i) in [("boot id", 0), ("urandom", 1), ("hostname", 2)] {
        assert_ne!(x[i], y[i], "{what} is the same in two restored VMs");
    }
    // The clock is the host's, not the template's.
    let year = chrono_year();
    assert_eq!((x[3], y[3]), (year.as_str(), year.as_str()));
    env.ok(&["rm", "-f", "one", "two"]);
}

fn chrono_year() -> String {
    text(&Command::new("date").arg("+%Y").output().unwrap().stdout).trim().to_owned()
}

#[test]
fn a_template_is_used_only_where_it_fits() {
    let env = Env::new();
    env.ok(&["run", "--rm", "busybox", "true"]);
    assert_eq!(template_keys(&env).len(), 1);
    env.ok(&["run", "--name", "big", "--memory", "320m", "busybox", "true"]);
    let keys = template_keys(&env);
    assert_eq!(keys.len(), 2, "another memory size needs another template");
    assert!(start_path(&env, "big").starts_with("template "));
    let meta: serde_json::Value =
        serde_json::from_str(&env.ok(&["template", "ls", "--format", "json"])).unwrap();
    let sizes: Vec<u64> =
        meta.as_array().unwrap().iter().map(|t| t["meta"]["memory_mib"].as_u64().unwrap()).collect();
    assert!(sizes.contains(&256) && sizes.contains(&320), "{sizes:?}");

    env.ok(&["run", "--name", "cold", "--no-template", "busybox", "true"]);
    assert_eq!(start_path(&env, "cold"), "cold boot (templates disabled)");
    let out = env
        .cmd()
        .args(["run", "--name", "off", "busybox", "true"])
        .env("BULKHEAD_TEMPLATES", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(start_path(&env, "off"), "cold boot (templates disabled)");
    assert_eq!(env.ok(&["template", "prune"]).lines().count(), 2);
    assert!(template_keys(&env).is_empty());
}

#[test]
fn a_damaged_template_falls_back_to_a_cold_boot() {
    let env = Env::new();
    let key = env.ok(&["template", "warm", "--network", "none"]).trim().to_owned();
    let state = env.root().join("templates").join(&key).join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&state).unwrap().set_len(len / 3).unwrap();

    assert_eq!(env.ok(&["run", "--name", "after", "busybox", "echo", "still runs"]), "still runs\n");
    let path = start_path(&env, "after");
    assert!(path.starts_with(&format!("cold boot (template {} failed to restore", &key[..12])), "{path}");
    // The damaged one is gone; the next start builds a sound one and uses it.
    env.ok(&["run", "--name", "next", "busybox", "true"]);
    assert!(start_path(&env, "next").starts_with("template "), "{}", start_path(&env, "next"));

    // A garbled description is a template that does not exist: rebuilt in place.
    let key = template_keys(&env).pop().unwrap();
    std::fs::write(env.root().join("templates").join(&key).join("meta.json"), b"{garbage").unwrap();
    env.ok(&["run", "--name", "third", "busybox", "true"]);
    assert!(start_path(&env, "third").starts_with(&format!("template {} ", &key[..12])));
    assert_eq!(template_keys(&env), vec![key.clone()]);

    // A truncated memory file (QEMU would grow it with zeroes) is one too.
    let memory = env.root().join("templates").join(&key).join("memory");
    std::fs::OpenOptions::new().write(true).open(&memory).unwrap().set_len(1 << 20).unwrap();
    env.ok(&["run", "--name", "fourth", "busybox", "true"]);
    assert!(start_path(&env, "fourth").starts_with(&format!("template {} ", &key[..12])));
    assert_eq!(std::fs::metadata(&memory).unwrap().len(), 256 << 20);

    // A damaged image specialisation: that start restores the plain template, the next one a
    // rebuilt specialisation.
    let images = env.root().join("templates").join(&key).join("images");
    let image = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    std::fs::write(image.join("state"), b"QEVM garbage").unwrap();
    env.ok(&["run", "--name", "fifth", "busybox", "echo", "fine"]);
    assert_eq!(start_path(&env, "fifth"), format!("template {}", &key[..12]));
    env.ok(&["run", "--name", "sixth", "busybox", "true"]);
    assert!(start_path(&env, "sixth").contains("(image "), "{}", start_path(&env, "sixth"));
    let left = env.processes_after_exit();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_image_template_serves_first_starts_and_restarts_keep_the_disk() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "first", "busybox", "sleep", "100000"]);
    let first = start_path(&env, "first");
    assert!(first.starts_with("template ") && first.contains("(image "), "{first}");
    env.ok(&["exec", "first", "sh", "-c", "echo kept > /kept"]);
    env.ok(&["stop", "-t", "1", "first"]);
    env.ok(&["start", "first"]);
    // A restart's disk is no longer the one the specialisation saw: the plain template.
    assert_eq!(start_path(&env, "first"), first[..21].to_owned());
    assert_eq!(env.ok(&["exec", "first", "cat", "/kept"]), "kept\n");

    // Another container of the image: the specialisation again, and a machine of its own.
    env.ok(&["run", "-d", "--name", "second", "busybox", "sleep", "100000"]);
    assert_eq!(start_path(&env, "second"), first);
    assert_ne!(env.run(&["exec", "second", "test", "-e", "/kept"]).status.code(), Some(0));
    let boot_id = |name: &str| env.ok(&["exec", name, "cat", "/proc/sys/kernel/random/boot_id"]);
    assert_ne!(boot_id("first"), boot_id("second"));
    // The image template's disk is untouched by either.
    env.ok(&["exec", "second", "sh", "-c", "echo other > /other && sync"]);
    env.ok(&["rm", "-f", "second"]);
    env.ok(&["run", "--name", "third", "busybox", "sh", "-c", "test ! -e /kept && test ! -e /other"]);
    env.ok(&["rm", "-f", "first", "third"]);
}

#[test]
fn a_container_keeps_its_disk_when_its_image_is_removed_and_pruned() {
    let env = Env::new();
    import_marked(&env);
    env.ok(&["run", "-d", "--name", "keeper", "marked", "sleep", "100000"]);
    env.ok(&["exec", "keeper", "sh", "-c", "echo mine > /mine"]);
    env.ok(&["stop", "-t", "1", "keeper"]);
    // Like Docker: the last name of an image a container was made from goes only by force.
    let out = env.run(&["rmi", "marked"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("is used by container keeper") && err.lines().count() == 1, "{err}");
    env.ok(&["rmi", "--force", "marked"]);
    env.ok(&["image", "prune"]);
    // The container's disk is copy-on-write over the image's root disk, which must stay.
    env.ok(&["start", "keeper"]);
    assert_eq!(env.ok(&["exec", "keeper", "cat", "/etc/marker", "/mine"]), "second image\nmine\n");
    env.ok(&["rm", "-f", "keeper"]);
    // Once no container uses it, prune takes it.
    let disks = || std::fs::read_dir(env.root().join("disks")).unwrap().count();
    let before = disks();
    env.ok(&["image", "prune"]);
    assert!(disks() < before, "the unused root disk stays");
}

#[test]
fn an_image_the_guest_cannot_mount_fails_with_one_line_and_leaves_no_template_of_it() {
    let env = Env::new();
    // A hostile image: /proc is a file, so nothing can be mounted there.
    let dir = env.dir.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let untar = Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(common::busybox_tarball()).status();
    assert!(untar.unwrap().success());
    let _ = std::fs::remove_dir_all(dir.join("proc"));
    std::fs::write(dir.join("proc"), "not a directory\n").unwrap();
    let tarball = env.dir.path().join("bad.tar");
    let tar = Command::new("tar").arg("-C").arg(&dir).arg("-cf").arg(&tarball).arg(".").status();
    assert!(tar.unwrap().success());
    env.ok(&["import", tarball.to_str().unwrap(), "bad"]);

    // The image's specialisation fails in the guest (MountRoot answers an error); the start
    // falls back to the plain template, whose Setup fails the same way: one line, code 125.
    let out = env.run(&["run", "--name", "bad1", "bad", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("/proc") && err.trim().lines().count() == 1, "{err}");
    let key = template_keys(&env).pop().unwrap();
    let images = env.root().join("templates").join(&key).join("images");
    // No images/ directory at all, or one without an installed specialisation.
    let installed = std::fs::read_dir(&images).map_or(0, |d| {
        d.flatten().filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.')).count()
    });
    assert_eq!(installed, 0, "a specialisation of the bad image was installed");
    // A good image still starts from the same template.
    env.ok(&["run", "--rm", "busybox", "true"]);
    assert_eq!(template_keys(&env), vec![key]);
    let left = env.processes_after_exit();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn concurrent_starts_build_one_template() {
    let env = Env::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = env.cmd();
            cmd.args(["run", "-d", "--name", &format!("racer{i}"), "busybox", "sleep", "1000"]);
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    assert_eq!(template_keys(&env).len(), 1);
    for i in 0..3 {
        assert!(start_path(&env, &format!("racer{i}")).starts_with("template "));
    }
    env.ok(&["rm", "-f", "racer0", "racer1", "racer2"]);
    assert!(env.processes().is_empty(), "{:?}", env.processes());
}
