//! Ranking candidate machines: band, then region distance, then a random tie-break.

use std::time::Duration;

use rand::Rng;

use crate::Band;

/// How far a candidate's region is from this node. Unknown distances sort last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Distance {
    Rtt(Duration),
    Unknown,
}

/// What the balancer needs to know of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub band: Band,
    pub distance: Distance,
}

/// Orders candidates best first and leaves out those at their hard limit.
///
/// Returns indices into `candidates`. Ties in band and distance are broken at random
/// so that equal machines share the traffic.
pub fn choose<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Vec<usize> {
    let mut ranked: Vec<(Band, Distance, u32, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.band != Band::AtHard)
        .map(|(i, c)| (c.band, c.distance, rng.random::<u32>(), i))
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, _, _, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn c(band: Band, ms: Option<u64>) -> Candidate {
        Candidate {
            band,
            distance: ms.map_or(Distance::Unknown, |m| {
                Distance::Rtt(Duration::from_millis(m))
            }),
        }
    }

    #[test]
    fn least_loaded_band_wins_over_nearer_region() {
        let cands = [c(Band::OverSoft, Some(0)), c(Band::UnderSoft, Some(80))];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&cands, &mut rng), vec![1, 0]);
    }

    #[test]
    fn nearest_region_within_a_band() {
        let cands = [
            c(Band::UnderSoft, None),
            c(Band::UnderSoft, Some(90)),
            c(Band::UnderSoft, Some(0)),
        ];
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(choose(&cands, &mut rng), vec![2, 1, 0]);
    }

    #[test]
    fn machines_at_hard_limit_are_left_out() {
        let cands = [c(Band::AtHard, Some(0)), c(Band::OverSoft, Some(200))];
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose(&cands, &mut rng), vec![1]);
        let all_full = [c(Band::AtHard, Some(0))];
        assert!(choose(&all_full, &mut rng).is_empty());
    }

    #[test]
    fn ties_are_spread_at_random() {
        let cands = [c(Band::UnderSoft, Some(0)), c(Band::UnderSoft, Some(0))];
        let mut rng = StdRng::seed_from_u64(4);
        let mut first = [0usize; 2];
        for _ in 0..1000 {
            first[choose(&cands, &mut rng)[0]] += 1;
        }
        assert!(first[0] > 350 && first[1] > 350, "{first:?}");
    }
}
