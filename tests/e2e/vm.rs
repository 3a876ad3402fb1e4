//! `vm` machines: each job in a qemu VM booted from an image these tests build once per target
//! directory (from Debian's packages, as `zeroci-controller image build` does for users), with KVM
//! where it works and software emulation elsewhere.

use std::process::Command;

use zeroci_testkit::wait_for;

use crate::harness::{Repo, Settings, TestEnv, pipeline, step};

fn vm_env(extra: &str) -> TestEnv {
    TestEnv::start_with(Settings {
        vm_images: Some(zeroci_testkit::vm::test_images()),
        // A VM under software emulation on a busy CI machine can be slow to answer.
        lost_agent_timeout: 30,
        extra: extra.into(),
        ..Settings::default()
    })
}

/// Host processes of `env`'s VM `machine` (qemu names each VM after its machine; its drives lie in
/// the environment's state directory, which tells apart the `job-1-a1` of tests running at once).
fn qemu_of(env: &TestEnv, machine: &str) -> Vec<i32> {
    let home = env.home().display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("qemu-system")
                && cmdline.contains(&format!("-name {machine} "))
                && cmdline.contains(&home))
            .then_some(pid)
        })
        .collect()
}

#[test]
fn a_job_runs_in_a_vm_of_its_own_and_leaves_nothing_behind() {
    let env = vm_env("");
    let home = env.home();
    let home = home.to_str().unwrap();
    let host_kernel =
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    let repo = Repo::new(
        &env,
        "where",
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                "cat /sys/class/dmi/id/sys_vendor",
                "uname -r",
                "hostname",
                &format!(
                    "for p in {home}/config.toml {home}/pki/ca.key {home}/state; do test -e $p && echo PRESENT $p; done; echo checked"
                ),
                "printf '<testsuite name=\"vm\"><testcase name=\"inside\"/></testsuite>' > /test.xml",
            ]),
        )],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let machine = format!("job-{id}-a1");
    let log = |step: &str| String::from_utf8(env.raw_log(id, Some(step))).unwrap();
    assert_eq!(log("1"), "QEMU\n");
    let kernel = log("2");
    assert!(
        kernel.contains("cloud-amd64") && kernel != host_kernel,
        "{kernel}"
    );
    assert_eq!(log("3"), format!("{machine}\n"));
    assert_eq!(log("4"), "checked\n");
    assert_eq!(
        step(
            &job,
            "printf '<testsuite name=\"vm\"><testcase name=\"inside\"/></testsuite>' > /test.xml"
        )["tests"]["total"],
        1,
        "{job:#}"
    );
    wait_for("the VM to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    assert!(qemu_of(&env, &machine).is_empty(), "qemu still runs");
    assert!(!env.home().join("state/machines").join(&machine).exists());
}

#[test]
fn a_pipeline_hands_its_artifact_from_one_vm_to_the_next_on_the_image_it_names() {
    let env = vm_env("[provisioner.vm.images]\n\"ubuntu:22.04\" = \"default\"\n");
    let yaml = r#"jobs:
  - name: build
    prerequisites: {image_name: "ubuntu:22.04"}
    script:
      - mkdir -p out && hostname > out/app.bin
    bin_path: out/app.bin
  - name: use
    script:
      - cat out/app.bin; hostname
"#;
    let repo = Repo::new(&env, "two", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let used = String::from_utf8(env.raw_log(id, Some("use: cat out/app.bin; hostname"))).unwrap();
    assert_eq!(used, format!("job-{id}-a1\njob-{id}-a2\n"));
}

#[test]
fn an_unknown_image_is_a_job_error_that_lists_the_known_ones() {
    let env = vm_env("");
    let repo = Repo::new(
        &env,
        "unknown",
        &[(
            "zeroCI.yaml",
            "prerequisites: {image_name: no-such-image}\nscript: [\"true\"]\n",
        )],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    let reason = job["reason"].as_str().unwrap();
    assert!(
        reason.contains("no image \"no-such-image\"") && reason.contains("known images: default"),
        "{reason}"
    );
}

#[test]
fn a_vm_killed_mid_step_ends_the_job_as_agent_lost_and_its_overlay_goes() {
    let env = TestEnv::start_with(Settings {
        vm_images: Some(zeroci_testkit::vm::test_images()),
        lost_agent_timeout: 5,
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "killed",
        &[("zeroCI.yaml", &pipeline(&["echo started; sleep 600"]))],
    );
    let id = env.submit(&repo.path);
    let machine = format!("job-{id}-a1");
    env.wait_for_output(id, Some("1"), "started");
    for pid in qemu_of(&env, &machine) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(
        job["reason"].as_str().unwrap().contains("agent lost"),
        "{job:#}"
    );
    wait_for("the machine to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    assert!(!env.home().join("state/machines").join(&machine).exists());
}

#[test]
fn a_cancelled_job_stops_inside_its_vm_and_the_vm_goes() {
    let env = vm_env("");
    let repo = Repo::new(
        &env,
        "cancelled",
        &[(
            "zeroCI.yaml",
            &pipeline(&["echo started; sleep 600", "echo never"]),
        )],
    );
    let id = env.submit(&repo.path);
    let machine = format!("job-{id}-a1");
    env.wait_for_output(id, Some("1"), "started");
    let out = env.cli(&["cancel", &id.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert_eq!(step(&job, "echo never")["status"], "skipped", "{job:#}");
    wait_for("the VM to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    assert!(qemu_of(&env, &machine).is_empty(), "qemu still runs");
}

#[test]
fn a_controller_killed_with_a_vm_running_leaves_no_vm_behind_after_its_restart() {
    let mut env = vm_env("");
    let repo = Repo::new(
        &env,
        "survivor",
        &[(
            "zeroCI.yaml",
            &pipeline(&["echo started; sleep 3; echo done"]),
        )],
    );
    let id = env.submit(&repo.path);
    let machine = format!("job-{id}-a1");
    env.wait_for_output(id, Some("1"), "started");
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    assert!(
        !qemu_of(&env, &machine).is_empty(),
        "the VM outlives the controller"
    );
    env.start_controller(&addr);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(
        String::from_utf8(env.raw_log(id, Some("1"))).unwrap(),
        "started\ndone\n"
    );
    wait_for("the VM to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    assert!(qemu_of(&env, &machine).is_empty(), "qemu still runs");
    assert!(!env.home().join("state/machines").join(&machine).exists());
}
