//! Scratch documents' `_id`s: UUID-shaped like opampd's (canonical instance_uid text),
//! consecutive or spread. A pure function of the document number and the scheme the CLI chose;
//! no I/O, no clock, no global state.

use opampd_loadtest::rng::SplitMix64;

/// How document number `i` becomes an `_id`; chosen once from `--random-ids` and passed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// `018f0000-0000-7000-8000-<i in 12 hex digits>`: neighbours, which Elasticsearch looks up
    /// more cheaply.
    Sequential,
    /// Spread uniformly over the id space, like real agents' instance uids.
    Random,
}

impl Ids {
    pub fn new(random: bool) -> Self {
        if random { Ids::Random } else { Ids::Sequential }
    }

    pub fn id(self, i: usize) -> String {
        match self {
            Ids::Random => {
                // One SplitMix64 step is a bijection on u64, so ids stay distinct; all 64 bits of
                // `a` are kept.
                let a = SplitMix64::new(i as u64).next_u64();
                let b = SplitMix64::new(a).next_u64();
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xffff,
                    b >> 48,
                    b & 0xffff_ffff_ffff
                )
            }
            Ids::Sequential => format!("018f0000-0000-7000-8000-{i:012x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_distinct_and_uuid_shaped() {
        let ids: Vec<String> = (0..10_000).map(|i| Ids::Random.id(i)).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
        }
        // Consecutive documents do not get neighbouring ids.
        assert_ne!(ids[0][..8], ids[1][..8]);
    }

    #[test]
    fn ids_are_the_ones_earlier_runs_wrote() {
        // Pinned from the tool's own splitmix64 before it moved to rng.rs: a run's ids, and so
        // its ceiling, stay comparable with recorded ones.
        for (i, random, sequential) in [
            (0, "e220a839-7b1d-cdaf-a706-dd2f4d197e6f", "018f0000-0000-7000-8000-000000000000"),
            (1, "910a2dec-8902-5cc1-5e41-ab087439611e", "018f0000-0000-7000-8000-000000000001"),
            (
                12_345,
                "22118258-a9d1-11a0-040d-6020823fbd3f",
                "018f0000-0000-7000-8000-000000003039",
            ),
            (
                9_999_999,
                "9c9776b4-9515-8f95-6007-4c942ae21a79",
                "018f0000-0000-7000-8000-00000098967f",
            ),
        ] {
            assert_eq!(Ids::Random.id(i), random, "{i}");
            assert_eq!(Ids::Sequential.id(i), sequential, "{i}");
        }
    }

    #[test]
    fn the_flag_picks_the_scheme() {
        assert_eq!(Ids::new(true), Ids::Random);
        assert_eq!(Ids::new(false), Ids::Sequential);
    }
}
