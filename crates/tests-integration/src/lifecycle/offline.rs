//! Steps 4-6 of the lifecycle scenario: an offline `bootc --sysroot`
//! switch from the registry on the powered-off disk, a guest killed in the
//! middle of staging, and a finalization that fails at shutdown.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bootc_tests_integration::vm;

use super::{KILL_DELAY, Lifecycle, V3_BULK_FILE_MIB, V3_BULK_MIB, v1};
use crate::Ctx;
use crate::guest::{self, Step, check, expect_booted, expect_entry, expect_karg, report};

impl Lifecycle {
    /// Steps 4-6: offline switch from the registry; kill while staging; a
    /// failed finalization.
    pub(super) fn offline_and_kill(
        &mut self,
        ctx: &Ctx,
        full: bool,
        v1_storage: &str,
        v2_registry: &str,
        v3_oci: &str,
        v1_oci: &str,
    ) -> Result<()> {
        let (v1_storage, v2_registry, v3_oci) = (
            v1_storage.to_owned(),
            v2_registry.to_owned(),
            v3_oci.to_owned(),
        );
        // The local edit of step 1 survives every merge; without it, v2's default.
        let conf = if full {
            "variant = local edit"
        } else {
            "# bootc example configuration|variant = v2"
        };
        // 4. Offline: stage v2 from the registry with --sysroot, boot it.
        let start = Instant::now();
        self.offline_switch(ctx)
            .context("step 4 (offline switch with --sysroot from the registry)")?;
        println!("offline switch: {:.1?}", start.elapsed());
        let reg = self.registry_ref.clone();
        // 5 (first half): after the checks, stage v3 (a large new layer)
        // and be killed in the middle of the import. The step prints its
        // own BOOTC-STEP-END before.
        let r = self.guest.boot_until(
            "4+5: v2 from the registry; killed while staging",
            r#"V conf cat /etc/bootc-example.conf
V mydata cat /var/lib/mydata/data
echo BOOTC-STEP-END
bootc switch --transport oci /run/bootctest/v3:v3 &
echo BOOTC-STAGING
wait
echo BOOTC-STAGING-DONE
"#,
            "BOOTC-STAGING",
            KILL_DELAY,
        )?;
        let s = Step::parse(&r).with_context(|| report(&r, None))?;
        s.check(&r, "step 4 (v2 booted after the offline switch)", |st| {
            expect_booted(&st, "registry", Some(&reg), &v2_registry)?;
            expect_entry(&st, "rollback", "containers-storage", v1(), &v1_storage)?;
            s.expect_val("variant", "v2")?;
            expect_karg(&s, "bootc.example=v2", true)?;
            s.expect_val("conf", conf)?;
            if full {
                s.expect_val("mydata", "precious")?;
            }
            ensure!(r.matched(), "no BOOTC-STAGING marker");
            ensure!(
                !vm::tail_lines(&r.log, usize::MAX).contains("BOOTC-STAGING-DONE"),
                "staging finished within {KILL_DELAY:?}: the kill did not land in the middle of it"
            );
            ensure!(
                !r.exited_cleanly(),
                "qemu exited by itself instead of being killed ({:?})",
                r.end
            );
            Ok(())
        })?;

        // 5. After the kill: the old deployment boots, staging v3 again
        // (over whatever the killed import left in the store) works.
        let start = Instant::now();
        let (r, s) = self.guest.boot_step(
            "5: after the kill, stage v3 again",
            r#"V bulk exists /usr/share/bootc-bulk
V t0 date +%s
R switch bootc switch --transport oci /run/bootctest/v3:v3
V t1 date +%s
J staged bootc status --format json
"#,
        )?;
        println!("boot + stage v3 again: {:.1?}", start.elapsed());
        s.check(&r, "step 5 (after the kill)", |st| {
            expect_booted(&st, "registry", Some(&reg), &v2_registry)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "a staged deployment survived the kill in the middle of staging: {}",
                st["status"]["staged"]
            );
            s.expect_vals(&[("variant", "v2"), ("bulk", "absent")])?;
            s.expect_rc("switch", 0)?;
            if let (Some(t0), Some(t1)) = (s.val("t0"), s.val("t1")) {
                println!("guest: staging v3 after the kill took {t0}..{t1} s");
            }
            let staged = s.json("staged")?;
            expect_entry(&staged, "staged", "oci", "/run/bootctest/v3:v3", &v3_oci)?;
            expect_booted(&staged, "registry", Some(&reg), &v2_registry)?;
            Ok(())
        })?;

        // 5 (end): the new staging was finalized and boots. 6 (first
        // half): stage v1, take the staged deployment's EROFS image out of
        // the store, power off: the finalization at shutdown fails.
        let (r, s) = self.guest.boot_step(
            "5+6: the re-staged v3 boots; stage v1 and break it",
            r#"V conf cat /etc/bootc-example.conf
V bulk sh -c 'ls /usr/share/bootc-bulk | wc -l'
V bulkread sh -c 'cat /usr/share/bootc-bulk/* | wc -c'
V bootdirs boot_dirs
R stage1 bootc switch --transport oci /run/bootctest/v1:v1
J staged1 bootc status --format json
id=$(sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' /sysroot/state/staged.json)
V brokenid echo "$id"
V imagebefore exists "/sysroot/composefs/images/$id"
rm -f "/sysroot/composefs/images/$id"
V imageafter exists "/sysroot/composefs/images/$id"
sync
"#,
        )?;
        s.check(
            &r,
            "step 5 (the deployment staged after the kill boots)",
            |st| {
                expect_booted(&st, "oci", Some("/run/bootctest/v3:v3"), &v3_oci)?;
                expect_entry(&st, "rollback", "registry", &reg, &v2_registry)?;
                s.expect_val("variant", "v3")?;
                let files = V3_BULK_MIB / V3_BULK_FILE_MIB;
                s.expect_vals(&[
                    ("bulk", &files.to_string()),
                    ("bulkread", &(u64::from(V3_BULK_MIB) << 20).to_string()),
                ])?;
                if full {
                    s.expect_val("conf", "variant = local edit")?;
                }
                let digest = st["status"]["booted"]["composefs"]["bootDigest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                s.expect_val("bootdirs", &digest)?;
                Ok(())
            },
        )?;
        let broken = check(
            &r,
            Some(&s),
            "step 6 (stage v1, break its image)",
            || -> Result<String> {
                s.expect_rc("stage1", 0)?;
                let st = s.json("staged1")?;
                expect_entry(&st, "staged", "oci", "/run/bootctest/v1:v1", v1_oci)?;
                let id = s.val("brokenid").unwrap_or_default();
                ensure!(
                    st["status"]["staged"]["composefs"]["verity"] == id.as_str(),
                    "staged.json names {id:?}, status.staged is {}",
                    st["status"]["staged"]["composefs"]["verity"]
                );
                s.expect_vals(&[("imagebefore", "present"), ("imageafter", "absent")])?;
                let log = vm::tail_lines(&r.log, usize::MAX);
                ensure!(
                    log.contains(&format!("finalizing staged deployment {id} failed")),
                    "no finalization failure for {id} on the console at shutdown"
                );
                Ok(id)
            },
        )?;

        // 6. The finalization failed: v3, the old default, boots again; the
        // failure is in the previous boot's journal of the unit.
        let (r, s) = self.guest.boot_step(
            "6: after the failed finalization",
            r#"R journal journalctl -b -1 -u bootc-finalize-staged.service --no-pager -o cat
"#,
        )?;
        s.check(&r, "step 6 (after the failed finalization)", |st| {
            expect_booted(&st, "oci", Some("/run/bootctest/v3:v3"), &v3_oci)?;
            expect_entry(&st, "rollback", "registry", &reg, &v2_registry)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "the staged deployment whose finalization failed is still staged: {}",
                st["status"]["staged"]
            );
            s.expect_val("variant", "v3")?;
            s.expect_rc("journal", 0)?;
            let journal = s.out("journal");
            for want in [
                format!(
                    "finalizing staged deployment {broken} failed; the previous default still boots"
                ),
                format!("dropped the staged deployment {broken}"),
            ] {
                ensure!(
                    journal.contains(&want),
                    "`journalctl -b -1 -u bootc-finalize-staged.service` lacks {want:?}:\n{journal}"
                );
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Mount the powered-off disk's root partition and `bootc --sysroot MNT
    /// switch` to v2 from the registry (finalized at once).
    fn offline_switch(&self, ctx: &Ctx) -> Result<()> {
        guest::with_root_fs(&self.guest.disk.path, true, |mnt| {
            let out = ctx
                .bootc
                .cmd(mnt)
                .args(["switch", &self.registry_ref])
                .output()
                .context("Running bootc --sysroot switch")?;
            println!(
                "offline switch: {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                out.status.success(),
                "bootc --sysroot MNT switch {} failed",
                self.registry_ref
            );
            let st = guest::offline_status(&ctx.bootc, mnt)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "offline switch left a staged deployment (offline finalizes at once): {}",
                st["status"]["staged"]
            );
            ensure!(
                st["spec"]["image"]["image"] == self.registry_ref.as_str(),
                "offline status spec.image is {}, not {}",
                st["spec"]["image"],
                self.registry_ref
            );
            Ok(())
        })
    }
}
