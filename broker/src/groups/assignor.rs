//! The partition assignors: pure functions from members and partitions to a target assignment.
//!
//! - [`Assignor::Range`]: per topic, the subscribed members (in member order) get contiguous ranges of partitions,
//!   the first `count % members` one more. Balanced within one per topic; ignores the previous assignment.
//! - [`Assignor::CooperativeSticky`]: balanced within one over all partitions (when every member subscribes to the
//!   same topics) while moving as few partitions as possible: every member keeps its previous partitions up to its
//!   fair share, and only the excess and the partitions of departed members move.
//!
//! Both only compute a target; the coordinator moves partitions towards it in two steps (revoke, then grant), so
//! partitions that keep their owner are never interrupted, whichever assignor computed the target.

use std::collections::{BTreeMap, BTreeSet};

/// A topic name and a partition number.
pub type TopicPartition = (String, u32);

/// How a group's partitions are divided among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Contiguous ranges per topic (Kafka's `range`).
    Range,
    /// Balanced and sticky (Kafka's `cooperative-sticky`); the default.
    CooperativeSticky,
}

impl Assignor {
    /// The assignor for a name from the wire: `range`, `cooperative-sticky`, or empty for the default.
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "" | "cooperative-sticky" => Some(Assignor::CooperativeSticky),
            _ => None,
        }
    }

    /// The name as spelled on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Assigns every partition of `topics` (name to partition count) to one of `members` subscribed to its topic.
    ///
    /// `members` maps a member's sort key (its instance id, or its member id) to its subscribed topics and its
    /// previous target; the result maps the same keys to their new targets (every member has an entry).
    /// A partition of a topic no member subscribes to is left out.
    pub fn assign(
        self,
        topics: &BTreeMap<String, u32>,
        members: &BTreeMap<String, MemberInput>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        match self {
            Assignor::Range => range(topics, members),
            Assignor::CooperativeSticky => sticky(topics, members),
        }
    }
}

/// What an assignor knows about one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInput {
    /// The topics it subscribes to.
    pub topics: BTreeSet<String>,
    /// Its previous target (empty for a new member).
    pub previous: BTreeSet<TopicPartition>,
}

fn empty_targets(members: &BTreeMap<String, MemberInput>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    members.keys().map(|key| (key.clone(), BTreeSet::new())).collect()
}

fn range(
    topics: &BTreeMap<String, u32>,
    members: &BTreeMap<String, MemberInput>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut targets = empty_targets(members);
    for (topic, &count) in topics {
        let subscribed: Vec<&String> =
            members.iter().filter(|(_, member)| member.topics.contains(topic)).map(|(key, _)| key).collect();
        let Ok(n_members) = u32::try_from(subscribed.len()) else { continue };
        if n_members == 0 {
            continue;
        }
        let (share, extra) = (count / n_members, count % n_members);
        let mut next = 0;
        for (idx, key) in (0u32..).zip(subscribed) {
            let size = share + u32::from(idx < extra);
            let target = targets.entry(key.clone()).or_default();
            target.extend((next..next + size).map(|partition| (topic.clone(), partition)));
            next += size;
        }
    }
    targets
}

fn sticky(
    topics: &BTreeMap<String, u32>,
    members: &BTreeMap<String, MemberInput>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut targets = empty_targets(members);
    let all: Vec<TopicPartition> = topics
        .iter()
        .filter(|(topic, _)| members.values().any(|member| member.topics.contains(*topic)))
        .flat_map(|(topic, &count)| (0..count).map(move |partition| (topic.clone(), partition)))
        .collect();
    if members.is_empty() || all.is_empty() {
        return targets;
    }
    let existing: BTreeSet<&TopicPartition> = all.iter().collect();
    let (floor, mut extra) = (all.len() / members.len(), all.len() % members.len());
    // Members with the most previous partitions keep first, so the `extra` slots go to those that already hold more.
    let mut order: Vec<(&String, Vec<&TopicPartition>)> = members
        .iter()
        .map(|(key, member)| {
            let kept: Vec<&TopicPartition> =
                member.previous.iter().filter(|tp| existing.contains(tp) && member.topics.contains(&tp.0)).collect();
            (key, kept)
        })
        .collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(b.0)));
    let mut taken: BTreeSet<&TopicPartition> = BTreeSet::new();
    for (key, kept) in &order {
        let mut cap = floor;
        if kept.len() > floor && extra > 0 {
            cap += 1;
            extra -= 1;
        }
        let target = targets.entry((*key).clone()).or_default();
        for tp in kept {
            if target.len() == cap {
                break;
            }
            if taken.insert(*tp) {
                target.insert((*tp).clone());
            }
        }
    }
    // Every partition left goes to the least-loaded subscribed member (ties by key).
    for tp in &all {
        if taken.contains(tp) {
            continue;
        }
        let least = targets
            .iter_mut()
            .filter(|(key, _)| members.get(*key).is_some_and(|member| member.topics.contains(&tp.0)))
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)));
        if let Some((_, target)) = least {
            target.insert(tp.clone());
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use proptest::collection::{btree_map, btree_set};
    use proptest::prelude::*;

    use super::*;

    fn member(topics: &[&str], previous: &[(&str, u32)]) -> MemberInput {
        MemberInput {
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            previous: previous.iter().map(|(topic, partition)| ((*topic).to_owned(), *partition)).collect(),
        }
    }

    /// Checks the invariants every assignment keeps: each partition of a subscribed topic is assigned exactly once,
    /// and only to a member subscribed to its topic.
    fn check_complete(
        topics: &BTreeMap<String, u32>,
        members: &BTreeMap<String, MemberInput>,
        targets: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) {
        assert_eq!(targets.keys().collect::<Vec<_>>(), members.keys().collect::<Vec<_>>());
        let mut seen = BTreeSet::new();
        for (key, target) in targets {
            for tp in target {
                assert!(members[key].topics.contains(&tp.0), "{key} got {tp:?} without subscribing");
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
            }
        }
        for (topic, &count) in topics {
            if members.values().any(|member| member.topics.contains(topic)) {
                for partition in 0..count {
                    assert!(seen.contains(&(topic.clone(), partition)), "{topic}/{partition} unassigned");
                }
            }
        }
    }

    fn spread(targets: &BTreeMap<String, BTreeSet<TopicPartition>>) -> usize {
        let sizes: Vec<usize> = targets.values().map(BTreeSet::len).collect();
        sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0)
    }

    #[test]
    fn range_gives_contiguous_ranges_first_members_one_more() {
        let topics = BTreeMap::from([("t".to_owned(), 5)]);
        let members = BTreeMap::from([("a".to_owned(), member(&["t"], &[])), ("b".to_owned(), member(&["t"], &[]))]);
        let targets = Assignor::Range.assign(&topics, &members);
        assert_eq!(targets["a"], [0, 1, 2].map(|p| ("t".to_owned(), p)).into());
        assert_eq!(targets["b"], [3, 4].map(|p| ("t".to_owned(), p)).into());
    }

    #[test]
    fn sticky_moves_only_what_a_new_member_needs() {
        let topics = BTreeMap::from([("t".to_owned(), 12)]);
        let first: Vec<(&str, u32)> = (0..6).map(|p| ("t", p)).collect();
        let second: Vec<(&str, u32)> = (6..12).map(|p| ("t", p)).collect();
        let members = BTreeMap::from([
            ("a".to_owned(), member(&["t"], &first)),
            ("b".to_owned(), member(&["t"], &second)),
            ("c".to_owned(), member(&["t"], &[])),
        ]);
        let targets = Assignor::CooperativeSticky.assign(&topics, &members);
        check_complete(&topics, &members, &targets);
        assert_eq!(targets["c"].len(), 4);
        assert!(targets["a"].is_subset(&members["a"].previous));
        assert!(targets["b"].is_subset(&members["b"].previous));
    }

    #[test]
    fn unknown_assignor_names_are_refused() {
        assert_eq!(Assignor::from_name(""), Some(Assignor::CooperativeSticky));
        assert_eq!(Assignor::from_name("range"), Some(Assignor::Range));
        assert_eq!(Assignor::from_name("roundrobin"), None);
    }

    fn arb_case() -> impl Strategy<Value = (BTreeMap<String, u32>, BTreeMap<String, MemberInput>)> {
        let topics = btree_map("[a-c]", 1u32..20, 1..3);
        topics.prop_flat_map(|topics| {
            let names: Vec<String> = topics.keys().cloned().collect();
            let all: Vec<TopicPartition> =
                topics.iter().flat_map(|(topic, &count)| (0..count).map(move |p| (topic.clone(), p))).collect();
            let previous = btree_set(proptest::sample::select(all), 0..10);
            let members = btree_map("m[0-9]{1,2}", previous, 1..8).prop_map(move |members| {
                // Every member subscribes to every topic; previous targets overlap as they may after failures.
                members
                    .into_iter()
                    .map(|(key, previous)| (key, MemberInput { topics: names.iter().cloned().collect(), previous }))
                    .collect::<BTreeMap<_, _>>()
            });
            (Just(topics), members)
        })
    }

    proptest! {
        #[test]
        fn sticky_is_complete_balanced_and_keeps_fair_shares((topics, members) in arb_case()) {
            let targets = Assignor::CooperativeSticky.assign(&topics, &members);
            check_complete(&topics, &members, &targets);
            prop_assert!(spread(&targets) <= 1, "unbalanced: {targets:?}");
            let total: usize = targets.values().map(BTreeSet::len).sum();
            let floor = total / members.len();
            // Minimal movement: a member keeps at least min(previous partitions, fair share) of what it had,
            // and a member that had no more than its fair share keeps everything it had (that no one else kept).
            let mut claimed = BTreeSet::new();
            let mut by_size: Vec<(&String, &MemberInput)> = members.iter().collect();
            by_size.sort_by(|a, b| b.1.previous.len().cmp(&a.1.previous.len()).then_with(|| a.0.cmp(b.0)));
            for (key, member) in by_size {
                let kept = targets[key].intersection(&member.previous).count();
                let unclaimed = member.previous.iter().filter(|tp| !claimed.contains(*tp)).count();
                prop_assert!(kept >= unclaimed.min(floor), "{key} kept {kept} of {unclaimed}, fair share {floor}");
                claimed.extend(member.previous.iter().cloned());
            }
        }

        #[test]
        fn sticky_is_stable_when_nothing_changes((topics, members) in arb_case()) {
            let first = Assignor::CooperativeSticky.assign(&topics, &members);
            let again: BTreeMap<String, MemberInput> = members
                .iter()
                .map(|(key, member)| (key.clone(), MemberInput { previous: first[key].clone(), ..member.clone() }))
                .collect();
            prop_assert_eq!(Assignor::CooperativeSticky.assign(&topics, &again), first);
        }

        #[test]
        fn range_is_complete_and_balanced_per_topic((topics, members) in arb_case()) {
            let targets = Assignor::Range.assign(&topics, &members);
            check_complete(&topics, &members, &targets);
            for topic in topics.keys() {
                let sizes: Vec<usize> =
                    targets.values().map(|target| target.iter().filter(|tp| &tp.0 == topic).count()).collect();
                prop_assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
            }
        }
    }
}
