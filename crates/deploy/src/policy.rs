//! The pure rules of the transactions: the boot order after finalizing
//! and after a rollback, what pruning keeps, and how much space staging needs.

use std::collections::BTreeSet;

/// Conservative estimate of the space staging needs on the sysroot: the
/// bytes still to download twice (compressed layers unpacked into the
/// store), plus the kernel and initramfs copied beside the deployment.
pub fn space_needed(download_bytes: u64, kernel_bytes: u64) -> u64 {
    download_bytes
        .saturating_mul(2)
        .saturating_add(kernel_bytes)
}

/// How many bytes are missing when `needed` bytes must fit in `available`;
/// `None` when they fit.
pub fn space_shortfall(needed: u64, available: u64) -> Option<u64> {
    (needed > available).then(|| needed - available)
}

/// The boot order after finalizing `new`: `new` first, then the booted
/// deployment (the rollback), then the rest of `order` (default first) as
/// it was.
pub fn order_after_finalize(order: &[String], new: &str, booted: &str) -> Vec<String> {
    let mut out = vec![new.to_owned()];
    if booted != new {
        out.push(booted.to_owned());
    }
    out.extend(
        order
            .iter()
            .filter(|id| id.as_str() != new && id.as_str() != booted)
            .cloned(),
    );
    out
}

/// The boot order after a rollback: the first two swapped.
pub fn order_after_rollback(order: &[String]) -> Option<Vec<String>> {
    if order.len() < 2 {
        return None;
    }
    let mut out = order.to_vec();
    out.swap(0, 1);
    Some(out)
}

/// What pruning keeps and removes, given the boot order (default first),
/// the booted deployment (`None` offline), the staged one, the pinned ones
/// and every deployment present.
///
/// Kept: the default and the rollback (the first two in `order`), the
/// booted and the staged deployments, and pinned ones (which stay in the
/// boot entries if they have one; a pinned deployment without an entry is
/// never removed either). Returns (new boot order, deployments to remove).
pub fn select_prune(
    order: &[String],
    booted: Option<&str>,
    staged: Option<&str>,
    pinned: &BTreeSet<String>,
    present: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let mut keep_order = Vec::new();
    for (i, id) in order.iter().enumerate() {
        if !present.contains(id) {
            continue;
        }
        if i < 2 || Some(id.as_str()) == booted || pinned.contains(id) {
            keep_order.push(id.clone());
        }
    }
    let remove = present
        .iter()
        .filter(|id| {
            !keep_order.contains(id)
                && !pinned.contains(id.as_str())
                && Some(id.as_str()) != staged
                && Some(id.as_str()) != booted
        })
        .cloned()
        .collect();
    (keep_order, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn order_table() {
        let cases: &[(&[&str], &str, &str, &[&str])] = &[
            (&["a"], "b", "a", &["b", "a"]),
            (&["a", "z"], "b", "a", &["b", "a", "z"]),
            // booted from the rollback entry: booted becomes rollback
            (&["a", "z"], "b", "z", &["b", "z", "a"]),
            (&[], "b", "b", &["b"]),
        ];
        for (order, new, booted, expect) in cases {
            assert_eq!(
                order_after_finalize(&s(order), new, booted),
                s(expect),
                "{order:?}"
            );
        }
        assert_eq!(order_after_rollback(&s(&["a"])), None);
        assert_eq!(
            order_after_rollback(&s(&["a", "b", "c"])),
            Some(s(&["b", "a", "c"]))
        );
    }

    #[test]
    fn prune_table() {
        let set = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        // (order, booted, staged, pinned, present, expected order, removed)
        type Case<'a> = (
            &'a [&'a str],
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                &["n", "b", "o"],
                Some("b"),
                None,
                &[],
                &["n", "b", "o"],
                &["n", "b"],
                &["o"],
            ),
            (
                &["n", "b", "o"],
                Some("b"),
                None,
                &["o"],
                &["n", "b", "o"],
                &["n", "b", "o"],
                &[],
            ),
            // offline: no booted
            (
                &["n", "b", "o", "p"],
                None,
                None,
                &[],
                &["n", "b", "o", "p"],
                &["n", "b"],
                &["o", "p"],
            ),
            // booted is third (after a rollback and an update): kept
            (
                &["n", "r", "b"],
                Some("b"),
                None,
                &[],
                &["n", "r", "b"],
                &["n", "r", "b"],
                &[],
            ),
            // staged is not in the order but kept; an orphan dir is removed
            (
                &["a", "b"],
                Some("a"),
                Some("s"),
                &[],
                &["a", "b", "s", "x"],
                &["a", "b"],
                &["x"],
            ),
            // entries naming a missing deployment are dropped
            (&["gone", "a"], Some("a"), None, &[], &["a"], &["a"], &[]),
            // a pinned deployment without an entry is kept (not removed)
            (
                &["a", "b", "c"],
                Some("a"),
                None,
                &["p", "c"],
                &["a", "b", "c", "p", "x"],
                &["a", "b", "c"],
                &["x"],
            ),
            // pinned in third place offline: stays in the order
            (
                &["n", "b", "p", "o"],
                None,
                None,
                &["p"],
                &["n", "b", "p", "o"],
                &["n", "b", "p"],
                &["o"],
            ),
        ];
        for (order, booted, staged, pinned, present, eorder, eremove) in cases {
            let (o, r) = select_prune(&s(order), *booted, *staged, &set(pinned), &set(present));
            assert_eq!((o, r), (s(eorder), s(eremove)), "{order:?} {booted:?}");
        }
    }

    #[test]
    fn space_table() {
        // (download, kernel, available, expected shortfall)
        let cases: &[(u64, u64, u64, Option<u64>)] = &[
            (0, 0, 0, None),
            (100, 50, 250, None),
            (100, 50, 249, Some(1)),
            (100, 50, 0, Some(250)),
            (0, 80, 79, Some(1)),
            (u64::MAX, 1, u64::MAX, None),
            (u64::MAX / 2 + 1, 0, u64::MAX - 1, Some(1)),
        ];
        for (dl, k, avail, expect) in cases {
            assert_eq!(
                space_shortfall(space_needed(*dl, *k), *avail),
                *expect,
                "{dl} {k} {avail}"
            );
        }
    }
}
