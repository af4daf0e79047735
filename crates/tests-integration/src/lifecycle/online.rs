//! Steps 1-3 of the lifecycle scenario, all in the guest: local changes on
//! v1 and `switch --apply` to v2 (a real reboot), v2 booted with the /etc
//! merge and kargs checked, `rollback`, v1 booted again.

use anyhow::{Result, ensure};

use super::{Lifecycle, v1};
use crate::guest::{expect_booted, expect_entry, expect_karg, expect_kargs};

/// Step lines reading the files step 1 changed locally, and what the image
/// sets (its default /etc file, whether it has `tree`).
const LOCAL_STATE: &str = "V conf cat /etc/bootc-example.conf
V added cat /etc/local-added
V after cat /etc/local-after-staging
V removable exists /etc/bootc-example-removable.conf
V defaults cat /etc/bootc-example-defaults.conf
V mydata cat /var/lib/mydata/data
V tree sh -c 'command -v tree || echo missing'
";

/// The values of [`LOCAL_STATE`] that every merge since step 1 keeps.
const LOCAL_CHANGES_KEPT: &[(&str, &str)] = &[
    ("conf", "variant = local edit"),
    ("added", "added locally"),
    ("after", "after staging"),
    ("removable", "absent"),
    ("mydata", "precious"),
];

impl Lifecycle {
    /// Steps 1-3: local changes on v1, switch to v2, roll back.
    pub(super) fn guest_switch_and_rollback(
        &mut self,
        v1_storage: &str,
        v2_oci: &str,
    ) -> Result<()> {
        let (v1_storage, v2_oci) = (v1_storage.to_owned(), v2_oci.to_owned());
        // 1. v1 booted: local /etc and /var changes, switch to v2 (OCI
        // layout) with --apply. A persistent journal for step 6.
        let (r, s) = self.guest.boot_step_apply(
            "1: v1, local changes, switch --apply to v2",
            r#"mkdir -p /var/log/journal && systemd-tmpfiles --create --prefix /var/log/journal && journalctl --flush
echo 'variant = local edit' > /etc/bootc-example.conf
echo 'added locally' > /etc/local-added
rm /etc/bootc-example-removable.conf
mkdir -p /var/lib/mydata && echo precious > /var/lib/mydata/data
sync
# bootc reboots through `systemctl reboot`: this wrapper runs first, with
# the deployment staged and nothing finalized yet.
mkdir -p /run/apply-shim
cat > /run/apply-shim/systemctl <<'SHIM'
#!/bin/bash
if [ "${1:-}" = reboot ]; then
    echo "@@VAL rebooter=$(tr '\0' ' ' < /proc/$PPID/cmdline)"
    J staged bootc status --format json
    # Made after staging: the merge at shutdown must still see it.
    echo 'after staging' > /etc/local-after-staging
    sync
    echo BOOTC-STEP-END
    echo BOOTC-APPLY-REBOOT
fi
exec /usr/bin/systemctl "$@"
SHIM
chmod +x /run/apply-shim/systemctl
export -f J
PATH=/run/apply-shim:$PATH bootc switch --apply --transport oci /run/bootctest/v2:v2
echo "@@RC switch=$?"
"#,
        )?;
        s.check(&r, "step 1 (v1 booted, switch to v2)", |before| {
            expect_booted(&before, "containers-storage", Some(v1()), &v1_storage)?;
            s.expect_val("variant", "v1")?;
            expect_karg(&s, "bootc.example=v1", true)?;
            let rebooter = s.val("rebooter").unwrap_or_default();
            ensure!(
                rebooter.contains("bootc switch --apply"),
                "systemctl reboot was called by {rebooter:?}, not bootc switch --apply"
            );
            let st = s.json("staged")?;
            expect_entry(&st, "staged", "oci", "/run/bootctest/v2:v2", &v2_oci)?;
            expect_booted(&st, "containers-storage", Some(v1()), &v1_storage)?;
            ensure!(
                st["spec"]["image"]["image"] == "/run/bootctest/v2:v2",
                "spec.image after switch is {}, not the OCI layout",
                st["spec"]["image"]
            );
            Ok(())
        })?;

        // 2. v2 booted: /usr, /etc merge, /var, kargs, v1 as rollback; roll back.
        let (r, s) = self.guest.boot_step(
            "2: v2 booted, roll back",
            &[
                LOCAL_STATE,
                r#"V v2only cat /etc/bootc-example-v2-only.conf
V bootdirs boot_dirs
echo 'edited in v2' > /etc/v2-local
echo 'written by v2' > /var/lib/mydata/from-v2
sync
R rollback bootc rollback
J queued bootc status --format json
"#,
            ]
            .concat(),
        )?;
        s.check(&r, "step 2 (v2 booted after switch; rollback)", |st| {
            expect_booted(&st, "oci", Some("/run/bootctest/v2:v2"), &v2_oci)?;
            expect_entry(&st, "rollback", "containers-storage", v1(), &v1_storage)?;
            ensure!(
                st["status"]["staged"].is_null(),
                "status.staged after finalize: {}",
                st["status"]["staged"]
            );
            s.expect_val("variant", "v2")?;
            expect_kargs(
                &s,
                &[
                    ("bootc.example=v2", true),
                    ("bootc.example=v1", false),
                    ("bootc.test.poweroff=1", true),
                ],
            )?;
            s.expect_vals(LOCAL_CHANGES_KEPT)?;
            s.expect_vals(&[
                ("v2only", "only in v2"),
                ("defaults", "defaults of v2"),
                ("tree", "/usr/bin/tree"),
            ])?;
            // v1 and v2 have the same kernel: one shared boot directory.
            let digest = &st["status"]["booted"]["composefs"]["bootDigest"];
            ensure!(
                digest.as_str().is_some_and(|d| d.len() == 64)
                    && *digest == st["status"]["rollback"]["composefs"]["bootDigest"],
                "booted and rollback bootDigest differ or are missing: {} / {}",
                digest,
                st["status"]["rollback"]["composefs"]["bootDigest"]
            );
            s.expect_val("bootdirs", digest.as_str().unwrap_or_default())?;
            s.expect_rc("rollback", 0)?;
            let q = s.json("queued")?;
            expect_booted(&q, "oci", Some("/run/bootctest/v2:v2"), &v2_oci)?;
            ensure!(
                q["status"]["rollbackQueued"] == true,
                "status.rollbackQueued after `bootc rollback` is {}",
                q["status"]["rollbackQueued"]
            );
            Ok(())
        })?;

        // 3. v1 booted again, with its /etc as it was.
        let (r, s) = self.guest.boot_step(
            "3: v1 after rollback",
            &[
                LOCAL_STATE,
                "V v2only exists /etc/bootc-example-v2-only.conf
V v2local exists /etc/v2-local
V fromv2 cat /var/lib/mydata/from-v2
",
            ]
            .concat(),
        )?;
        s.check(&r, "step 3 (v1 booted after rollback)", |st| {
            expect_booted(&st, "containers-storage", Some(v1()), &v1_storage)?;
            expect_entry(&st, "rollback", "oci", "/run/bootctest/v2:v2", &v2_oci)?;
            s.expect_val("variant", "v1")?;
            expect_kargs(
                &s,
                &[("bootc.example=v1", true), ("bootc.example=v2", false)],
            )?;
            s.expect_vals(LOCAL_CHANGES_KEPT)?;
            s.expect_vals(&[
                ("v2only", "absent"),
                ("v2local", "absent"),
                ("defaults", "defaults of v1"),
                ("fromv2", "written by v2"),
                ("tree", "missing"),
            ])?;
            Ok(())
        })?;

        Ok(())
    }
}
