//! Whole rounds between [`ClientRound`]s and a [`ServerRound`], with dropouts injected at every
//! phase and a coordinator that misbehaves.

// Parallel per-partner arrays read clearest with an index.
#![allow(clippy::needless_range_loop)]

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::keys::{ENVELOPE_LEN, sign_keys, sign_survivors, survivors_digest};
use super::*;
use crate::aggregate::RunningSum;

/// When a client stops taking part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Never advertises keys.
    BeforeKeys,
    /// Advertises keys, sends no shares.
    AfterKeys,
    /// Sends shares, sends no masked input.
    AfterShares,
    /// Sends its masked input, signs no survivor set.
    AfterInput,
    /// Signs the survivor set, reveals nothing.
    AfterSignature,
    /// Takes part throughout.
    Never,
}

fn stage_of(code: u8) -> Stage {
    match code {
        0 => Stage::BeforeKeys,
        1 => Stage::AfterKeys,
        2 => Stage::AfterShares,
        3 => Stage::AfterInput,
        4 => Stage::AfterSignature,
        _ => Stage::Never,
    }
}

struct Cohort {
    ids: Vec<String>,
    identities: Vec<SigningKey>,
    roster: Roster,
}

fn cohort(n: usize, rng: &mut StdRng) -> Cohort {
    // Zero-padded so that cohort order is sorted order (the canonical order).
    let width = n.saturating_sub(1).to_string().len();
    let ids: Vec<String> = (0..n).map(|i| format!("p{i:0width$}")).collect();
    let identities: Vec<SigningKey> = (0..n).map(|_| generate_identity(rng)).collect();
    let mut roster = Roster::new();
    for (id, key) in ids.iter().zip(&identities) {
        roster.insert(id.clone(), key.verifying_key()).unwrap();
    }
    Cohort {
        ids,
        identities,
        roster,
    }
}

fn params(c: &Cohort, t: usize, degree: usize, d: usize) -> RoundParams {
    let round = RoundId::new("job-1", 7, 0);
    RoundParams::new(round, c.ids.clone(), t, degree, d).unwrap()
}

/// Every survivor's signature over `survivors`, as honest survivors would send them.
fn signatures(c: &Cohort, p: &RoundParams, survivors: &[String]) -> Vec<SurvivorSignature> {
    let ids: Vec<&str> = survivors.iter().map(String::as_str).collect();
    survivors
        .iter()
        .map(|id| {
            let i = c.ids.iter().position(|x| x == id).unwrap();
            SurvivorSignature {
                partner_id: id.clone(),
                signature: sign_survivors(&c.identities[i], &survivors_digest(p.round(), &ids)),
            }
        })
        .collect()
}

/// The consistency check and the unmask for one client, with every survivor's signature.
fn unmask(
    client: &mut ClientRound,
    c: &Cohort,
    i: usize,
    survivors: &[String],
) -> Result<Vec<RevealedShare>, SecAggError> {
    client.on_survivors(survivors, &c.identities[i])?;
    let p = client.params().clone();
    client.on_unmask(&signatures(c, &p, survivors), &c.roster)
}

const POLICY: ClientPolicy = ClientPolicy { min_partners: 1 };

/// What a simulated round produced.
struct Outcome {
    /// The unmasked sum, or why the round failed.
    result: Result<Vec<u32>, SecAggError>,
    /// The plain wrapping sum of the inputs of the partners in U3.
    expected: Vec<u32>,
    /// Partners that revealed shares (U4).
    revealers: usize,
}

/// Runs one round with each client dropping at `stages[i]`; a client that refuses a step
/// drops there.
fn run_round(n: usize, t: usize, degree: usize, d: usize, stages: &[Stage], seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cohort(n, &mut rng);
    let p = params(&c, t, degree, d);
    let mut clients: Vec<Option<ClientRound>> = Vec::with_capacity(n);
    let mut server = ServerRound::new(p.clone());
    let fail = |result, expected: Vec<u32>| Outcome {
        result: Err(result),
        expected,
        revealers: 0,
    };

    // Phase 1: advertise keys.
    for i in 0..n {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        if stages[i] > Stage::BeforeKeys {
            let signed = SignedKeys {
                partner_id: c.ids[i].clone(),
                keys: advert,
            };
            server.on_keys(signed, &c.roster).unwrap();
            clients.push(Some(client));
        } else {
            clients.push(None);
        }
    }
    if let Err(e) = server.close_keys() {
        return fail(e, vec![0; d]);
    }

    // Phase 2: share keys.
    for i in 0..n {
        let Some(client) = clients[i].as_mut() else {
            continue;
        };
        let keys = server.keys_for(&c.ids[i]).unwrap();
        match client.on_keys(&keys, &c.roster, &mut rng) {
            Ok(envelopes) if stages[i] > Stage::AfterKeys => {
                server.on_shares(&c.ids[i], envelopes).unwrap();
            }
            _ => clients[i] = None,
        }
    }
    if let Err(e) = server.close_shares() {
        return fail(e, vec![0; d]);
    }

    // Phase 3: masked input.
    let mut sum = RunningSum::new(d);
    let mut expected = vec![0u32; d];
    let mut survivors = Vec::new();
    for i in 0..n {
        let Some(client) = clients[i].as_mut() else {
            continue;
        };
        let envelopes = server.envelopes_for(&c.ids[i]).unwrap();
        if client.on_shares(&envelopes).is_err() || stages[i] <= Stage::AfterShares {
            clients[i] = None;
            continue;
        }
        let x: Vec<u32> = (0..d).map(|_| rng.random()).collect();
        let mut y = x.clone();
        // Every way a client can mask; the sum must come out the same whichever it uses.
        match i % 3 {
            0 => client.mask(&mut y).unwrap(),
            1 => client.take_mask().unwrap().apply(&mut y).unwrap(),
            _ => client.take_mask().unwrap().expand().apply(&mut y).unwrap(),
        }
        sum.add_all(&y);
        for (e, v) in expected.iter_mut().zip(&x) {
            *e = e.wrapping_add(*v);
        }
        survivors.push(c.ids[i].clone());
    }
    let u3 = match server.close_inputs(&survivors) {
        Ok(u3) => u3,
        Err(e) => {
            // A coordinator that pressed on anyway gets nothing from any survivor.
            for (i, client) in clients.iter_mut().enumerate() {
                if let Some(client) = client {
                    assert!(client.on_survivors(&survivors, &c.identities[i]).is_err());
                }
            }
            return fail(e, expected);
        }
    };

    // Phase 4a: consistency check.
    for i in 0..n {
        let Some(client) = clients[i].as_mut() else {
            continue;
        };
        match client.on_survivors(&u3, &c.identities[i]) {
            Ok(signature) if stages[i] > Stage::AfterInput => {
                let signed = SurvivorSignature {
                    partner_id: c.ids[i].clone(),
                    signature,
                };
                server.on_signature(signed, &c.roster).unwrap();
            }
            _ => clients[i] = None,
        }
    }
    let u4 = match server.close_consistency() {
        Ok(u4) => u4,
        Err(e) => return fail(e, expected),
    };

    // Phase 4b: unmask.
    let mut revealers = 0;
    for i in 0..n {
        let Some(client) = clients[i].as_mut() else {
            continue;
        };
        if !u4.contains(&c.ids[i]) {
            continue;
        }
        let signatures = server.signatures_for(&c.ids[i]).unwrap();
        if let Ok(shares) = client.on_unmask(&signatures, &c.roster)
            && stages[i] > Stage::AfterSignature
        {
            server.on_revealed(&c.ids[i], shares).unwrap();
            revealers += 1;
        }
    }
    let mut total = sum.into_inner();
    let before = total.clone();
    let result = server.unmask(&mut total).map(|()| total.clone());
    if result.is_err() {
        assert_eq!(total, before, "a failed unmask removes nothing");
    }
    Outcome {
        result,
        expected,
        revealers,
    }
}

fn stages_strategy(max_n: usize) -> impl Strategy<Value = (usize, usize, usize, Vec<Stage>, u64)> {
    (1usize..=max_n).prop_flat_map(|n| {
        (
            Just(n),
            n / 2 + 1..=n,
            0usize..300,
            proptest::collection::vec((0u8..12).prop_map(stage_of), n),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Complete graph: with dropouts at every phase the round succeeds exactly when at least t
    /// partners take part to the end, and then the result is the plain sum of the survivors'
    /// inputs, bit for bit; otherwise it aborts with nothing removed from the sum.
    #[test]
    fn complete_graph_sum_is_exact_under_dropouts((n, t, d, stages, seed) in stages_strategy(16)) {
        let out = run_round(n, t, n - 1, d, &stages, seed);
        let finishers = stages.iter().filter(|&&s| s == Stage::Never).count();
        prop_assert_eq!(out.result.is_ok(), finishers >= t, "{:?}", out.result);
        if let Ok(sum) = out.result {
            prop_assert_eq!(out.revealers, finishers);
            prop_assert_eq!(sum, out.expected);
        }
    }

    /// Sparse graph: whenever the round succeeds, the result is exact; with few dropouts it
    /// succeeds.
    #[test]
    fn sparse_graph_sum_is_exact_under_dropouts(
        n in 8usize..=40,
        half in 1usize..=3,
        d in 0usize..100,
        codes in proptest::collection::vec(0u8..40, 40),
        seed in any::<u64>(),
    ) {
        let degree = 2 * half; // neighbourhoods of 3, 5 or 7
        let t = recommended_threshold(degree);
        let stages: Vec<Stage> = codes[..n].iter().map(|&c| stage_of(c)).collect();
        let out = run_round(n, t, degree, d, &stages, seed);
        if let Ok(sum) = &out.result {
            prop_assert_eq!(sum, &out.expected);
        }
        if stages.iter().all(|&s| s == Stage::Never) {
            prop_assert!(out.result.is_ok(), "{:?}", out.result);
        }
    }
}

#[test]
fn sparse_graph_survives_spread_dropouts() {
    // Degree 8: neighbourhoods of 9 with t = 7, so any two dropouts leave at least 7 of every
    // neighbourhood; drop two at different phases.
    let n = 30;
    let mut stages = vec![Stage::Never; n];
    stages[3] = Stage::AfterShares;
    stages[17] = Stage::AfterInput;
    let out = run_round(n, 7, 8, 50, &stages, 11);
    assert_eq!(out.result, Ok(out.expected));
}

#[test]
fn two_hundred_partners_with_the_sparse_graph() {
    let n = 200;
    let degree = recommended_degree(n);
    let t = recommended_threshold(degree);
    let mut stages = vec![Stage::Never; n];
    for (k, stage) in [
        Stage::BeforeKeys,
        Stage::AfterKeys,
        Stage::AfterShares,
        Stage::AfterInput,
        Stage::AfterSignature,
    ]
    .into_iter()
    .enumerate()
    {
        for j in 0..3 {
            stages[k * 40 + j * 13 + 1] = stage;
        }
    }
    let out = run_round(n, t, degree, 64, &stages, 200);
    assert_eq!(out.result, Ok(out.expected));
    assert_eq!(out.revealers, n - 15);
}

/// Drives a round for `n` partners up to the point where every client has masked its input.
struct Masked {
    c: Cohort,
    clients: Vec<ClientRound>,
    server: ServerRound,
    inputs: Vec<Vec<u32>>,
    masked: Vec<Vec<u32>>,
}

fn masked_round(n: usize, t: usize, d: usize, seed: u64) -> Masked {
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cohort(n, &mut rng);
    let p = params(&c, t, n - 1, d);
    let mut server = ServerRound::new(p.clone());
    let mut clients = Vec::new();
    for i in 0..n {
        let (client, keys) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        let signed = SignedKeys {
            partner_id: c.ids[i].clone(),
            keys,
        };
        server.on_keys(signed, &c.roster).unwrap();
        clients.push(client);
    }
    server.close_keys().unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        let keys = server.keys_for(&c.ids[i]).unwrap();
        let envelopes = client.on_keys(&keys, &c.roster, &mut rng).unwrap();
        server.on_shares(&c.ids[i], envelopes).unwrap();
    }
    server.close_shares().unwrap();
    let mut inputs = Vec::new();
    let mut masked = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .on_shares(&server.envelopes_for(&c.ids[i]).unwrap())
            .unwrap();
        let x: Vec<u32> = (0..d).map(|k| (k as u32 * 7 + i as u32) % 11).collect();
        let mut y = x.clone();
        client.mask(&mut y).unwrap();
        inputs.push(x);
        masked.push(y);
    }
    Masked {
        c,
        clients,
        server,
        inputs,
        masked,
    }
}

#[test]
fn a_masked_vector_looks_uniform() {
    let d = 4096;
    let m = masked_round(3, 2, d, 5);
    let (x, y) = (&m.inputs[0], &m.masked[0]);
    assert_ne!(x, y);
    let differing = x.iter().zip(y).filter(|(a, b)| a != b).count();
    assert!(differing > d - 5, "only {differing} words changed");
    let chi2 = |v: &[u32]| {
        let mut counts = [0u32; 256];
        for w in v {
            for b in w.to_le_bytes() {
                counts[usize::from(b)] += 1;
            }
        }
        let expected = (v.len() * 4) as f64 / 256.0;
        counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum::<f64>()
    };
    // 255 degrees of freedom: P(chi2 > 330.5) = 0.001 for uniform bytes.
    assert!(chi2(y) < 330.5, "masked chi2 = {}", chi2(y));
    assert!(chi2(x) > 330.5, "the input itself is far from uniform");
}

#[test]
fn masking_twice_is_refused() {
    let mut m = masked_round(3, 2, 8, 6);
    let mut again = m.inputs[0].clone();
    assert_eq!(
        m.clients[0].mask(&mut again),
        Err(SecAggError::WrongPhase {
            call: "mask",
            phase: "masked"
        })
    );
    assert_eq!(again, m.inputs[0], "nothing masked");
    assert!(
        m.clients[0].take_mask().is_err(),
        "its masks cannot be taken after masking"
    );
}

#[test]
fn taken_masks_are_taken_once_and_fit_one_length() {
    let mut rng = StdRng::seed_from_u64(8);
    let c = cohort(3, &mut rng);
    let p = params(&c, 2, 2, 8);
    let mut server = ServerRound::new(p.clone());
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, keys) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        let signed = SignedKeys {
            partner_id: c.ids[i].clone(),
            keys,
        };
        server.on_keys(signed, &c.roster).unwrap();
        clients.push(client);
    }
    server.close_keys().unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        let keys = server.keys_for(&c.ids[i]).unwrap();
        let envelopes = client.on_keys(&keys, &c.roster, &mut rng).unwrap();
        server.on_shares(&c.ids[i], envelopes).unwrap();
    }
    server.close_shares().unwrap();
    let client = &mut clients[0];
    client
        .on_shares(&server.envelopes_for(&c.ids[0]).unwrap())
        .unwrap();
    let mask = client.take_mask().unwrap();
    assert_eq!(client.phase(), ClientPhase::Masked);
    assert!(client.take_mask().is_err(), "masks are taken once");
    assert!(client.mask(&mut [0; 8]).is_err(), "and not masked again");
    let mut short = [0u32; 7];
    assert_eq!(
        mask.expand().apply(&mut short),
        Err(SecAggError::VectorLength {
            expected: 8,
            got: 7
        })
    );
    assert_eq!(short, [0; 7], "nothing masked");
}

#[test]
fn a_client_reveals_once_whatever_the_survivor_sets() {
    let mut m = masked_round(5, 3, 8, 7);
    let all = m.c.ids.clone();
    let first = unmask(&mut m.clients[0], &m.c, 0, &all).unwrap();
    assert!(first.iter().all(|s| s.kind == ShareKind::SelfMask));
    // A coordinator that now claims p4 dropped would get p4's mask key share too.
    let fewer: Vec<String> = all[..4].to_vec();
    assert_eq!(
        unmask(&mut m.clients[0], &m.c, 0, &fewer),
        Err(SecAggError::AlreadyRevealed)
    );
    assert_eq!(
        unmask(&mut m.clients[0], &m.c, 0, &all),
        Err(SecAggError::AlreadyRevealed)
    );
}

#[test]
fn dishonest_survivor_lists_are_refused_without_revealing() {
    let mut m = masked_round(5, 3, 8, 8);
    let ids = m.c.ids.clone();
    let c = &m.c;
    let client = &mut m.clients[0];
    assert_eq!(
        unmask(client, c, 0, &ids[1..]),
        Err(SecAggError::NotASurvivor)
    );
    assert_eq!(
        unmask(client, c, 0, &[ids[0].clone(), ids[1].clone()]),
        Err(SecAggError::BelowThreshold {
            phase: "inputs",
            partner: "p0".into(),
            got: 2,
            need: 3
        })
    );
    assert_eq!(
        unmask(
            client,
            c,
            0,
            &[ids[0].clone(), ids[1].clone(), ids[1].clone()]
        ),
        Err(SecAggError::DuplicateSurvivor("p1".into()))
    );
    assert_eq!(
        unmask(client, c, 0, &[ids[0].clone(), "mallory".into()]),
        Err(SecAggError::NotInCohort("mallory".into()))
    );
    // (Refusals above changed nothing: an honest list still works, once.)
    let shares = unmask(client, c, 0, &ids[..3]).unwrap();
    let kinds: Vec<ShareKind> = shares.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds.iter().filter(|&&k| k == ShareKind::SelfMask).count(),
        3
    );
    assert_eq!(
        kinds.iter().filter(|&&k| k == ShareKind::MaskKey).count(),
        2
    );
}

/// The consistency check on the client: it reveals only for the one set it signed, with
/// valid signatures over exactly that set from at least t of its neighbourhood.
#[test]
fn a_client_reveals_only_with_t_signatures_over_the_set_it_signed() {
    let mut m = masked_round(5, 3, 8, 18);
    let ids = m.c.ids.clone();
    let c = &m.c;
    let p = m.clients[0].params().clone();
    let client = &mut m.clients[0];
    // Nothing before signing.
    assert!(matches!(
        client.on_unmask(&signatures(c, &p, &ids), &c.roster),
        Err(SecAggError::WrongPhase { .. })
    ));
    client.on_survivors(&ids[..4], &c.identities[0]).unwrap();
    // A second set is never signed.
    assert_eq!(
        client.on_survivors(&ids[..3], &c.identities[0]),
        Err(SecAggError::AlreadyRevealed)
    );
    // Signatures over another set (the coordinator showed others all five).
    let other = signatures(c, &p, &ids);
    assert!(matches!(
        client.on_unmask(&other[..4], &c.roster),
        Err(SecAggError::BadSurvivorSignature(_))
    ));
    let good = signatures(c, &p, &ids[..4]);
    // t − 1 valid signatures are not enough.
    assert_eq!(
        client.on_unmask(&good[..2], &c.roster),
        Err(SecAggError::BelowThreshold {
            phase: "consistency",
            partner: "p0".into(),
            got: 2,
            need: 3
        })
    );
    // A signer twice, a signer outside the set, a forged signature.
    let twice = vec![good[0].clone(), good[1].clone(), good[1].clone()];
    assert_eq!(
        client.on_unmask(&twice, &c.roster),
        Err(SecAggError::DuplicateSignature("p1".into()))
    );
    let mut outside = good[..3].to_vec();
    outside.push(SurvivorSignature {
        partner_id: "p4".into(),
        signature: other[4].signature,
    });
    assert_eq!(
        client.on_unmask(&outside, &c.roster),
        Err(SecAggError::SignerNotASurvivor("p4".into()))
    );
    let mut forged = good[..3].to_vec();
    forged[2].signature[0] ^= 1;
    assert_eq!(
        client.on_unmask(&forged, &c.roster),
        Err(SecAggError::BadSurvivorSignature("p2".into()))
    );
    // Exactly t valid signatures: it reveals, once.
    let shares = client.on_unmask(&good[..3], &c.roster).unwrap();
    assert_eq!(shares.len(), 5);
    assert_eq!(
        client.on_unmask(&good, &c.roster),
        Err(SecAggError::AlreadyRevealed)
    );
}

#[test]
fn survivors_that_never_shared_are_refused() {
    // p4 advertises keys but sends no shares: it is not in U2.
    let mut rng = StdRng::seed_from_u64(9);
    let c = cohort(5, &mut rng);
    let p = params(&c, 3, 4, 4);
    let mut clients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..5 {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        keys.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        });
        clients.push(client);
    }
    let mut outboxes: Vec<Vec<Envelope>> = Vec::new();
    for client in clients.iter_mut() {
        outboxes.push(client.on_keys(&keys, &c.roster, &mut rng).unwrap());
    }
    let to_p0: Vec<Envelope> = outboxes[1..4]
        .iter()
        .flatten()
        .filter(|e| e.to == "p0")
        .cloned()
        .collect();
    clients[0].on_shares(&to_p0).unwrap();
    clients[0].mask(&mut [0; 4]).unwrap();
    assert_eq!(
        unmask(&mut clients[0], &c, 0, &c.ids),
        Err(SecAggError::SurvivorWithoutShares("p4".into()))
    );
    assert_eq!(
        unmask(&mut clients[0], &c, 0, &c.ids[..4]).map(|s| s.len()),
        Ok(4)
    );
}

#[test]
fn forged_foreign_and_unknown_keys_are_rejected() {
    let mut rng = StdRng::seed_from_u64(10);
    let c = cohort(4, &mut rng);
    let p = params(&c, 3, 3, 4);
    let mut keys = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        keys.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        });
        clients.push(client);
    }
    let client = &mut clients[0];
    let with = |f: &dyn Fn(&mut Vec<SignedKeys>)| {
        let mut k = keys.clone();
        f(&mut k);
        k
    };

    // A mask key swapped in by the coordinator.
    let forged = with(&|k| k[1].keys.mask_public = [9; 32]);
    assert_eq!(
        client.on_keys(&forged, &c.roster, &mut rng),
        Err(SecAggError::BadSignature("p1".into()))
    );
    // Keys for p1, properly signed, but by p2's identity.
    let foreign = with(&|k| {
        let adv = &mut k[1].keys;
        adv.signature = sign_keys(
            &c.identities[2],
            p.round(),
            "p1",
            &adv.cipher_public,
            &adv.mask_public,
        );
    });
    assert_eq!(
        client.on_keys(&foreign, &c.roster, &mut rng),
        Err(SecAggError::BadSignature("p1".into()))
    );
    // Keys signed for another round.
    let replayed = with(&|k| {
        let adv = &mut k[1].keys;
        adv.signature = sign_keys(
            &c.identities[1],
            &RoundId::new("job-1", 6, 0),
            "p1",
            &adv.cipher_public,
            &adv.mask_public,
        );
    });
    assert_eq!(
        client.on_keys(&replayed, &c.roster, &mut rng),
        Err(SecAggError::BadSignature("p1".into()))
    );
    // A partner this client's roster does not know.
    let mut small_roster = Roster::new();
    for i in [0, 1, 3] {
        small_roster
            .insert(c.ids[i].clone(), c.identities[i].verifying_key())
            .unwrap();
    }
    assert_eq!(
        client.on_keys(&keys, &small_roster, &mut rng),
        Err(SecAggError::UnknownPartner("p2".into()))
    );
    // Someone outside the cohort, a partner twice, this client's own keys replaced.
    let outsider = with(&|k| k[3].partner_id = "mallory".into());
    assert_eq!(
        client.on_keys(&outsider, &c.roster, &mut rng),
        Err(SecAggError::NotInCohort("mallory".into()))
    );
    let twice = with(&|k| k.push(k[2].clone()));
    assert_eq!(
        client.on_keys(&twice, &c.roster, &mut rng),
        Err(SecAggError::DuplicateKeys("p2".into()))
    );
    let replaced = with(&|k| k[0] = k[1].clone());
    assert_eq!(
        client.on_keys(&replaced, &c.roster, &mut rng),
        Err(SecAggError::DuplicateKeys("p1".into()))
    );
    let mut own = keys.clone();
    own[0].keys = clients_advert_for_other(&c, &p, &mut rng);
    assert_eq!(
        clients[0].on_keys(&own, &c.roster, &mut rng),
        Err(SecAggError::OwnKeysAltered)
    );
    // Too few partners left in the neighbourhood.
    assert!(matches!(
        clients[0].on_keys(&keys[..2], &c.roster, &mut rng),
        Err(SecAggError::BelowThreshold {
            phase: "keys",
            got: 2,
            need: 3,
            ..
        })
    ));
    // None of this changed the client: the honest key list still works.
    assert_eq!(clients[0].phase(), ClientPhase::AdvertisedKeys);
    assert_eq!(
        clients[0]
            .on_keys(&keys, &c.roster, &mut rng)
            .map(|e| e.len()),
        Ok(3)
    );

    // The coordinator checks signatures too.
    let mut server = ServerRound::new(p.clone());
    assert_eq!(
        server.on_keys(forged[1].clone(), &c.roster),
        Err(SecAggError::BadSignature("p1".into()))
    );
    assert_eq!(
        server.on_keys(outsider[3].clone(), &c.roster),
        Err(SecAggError::NotInCohort("mallory".into()))
    );
}

/// A validly signed advertisement for p0 that p0's client did not make.
fn clients_advert_for_other(c: &Cohort, p: &RoundParams, rng: &mut StdRng) -> KeyAdvertisement {
    ClientRound::new(p.clone(), &c.ids[0], &c.identities[0], POLICY, rng)
        .unwrap()
        .1
}

#[test]
fn tampered_and_misrouted_envelopes_are_refused() {
    let mut rng = StdRng::seed_from_u64(12);
    let c = cohort(3, &mut rng);
    let p = params(&c, 2, 2, 4);
    let mut clients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..3 {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        keys.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        });
        clients.push(client);
    }
    let out: Vec<Vec<Envelope>> = clients
        .iter_mut()
        .map(|cl| cl.on_keys(&keys, &c.roster, &mut rng).unwrap())
        .collect();
    let to_p0: Vec<Envelope> = out
        .iter()
        .flatten()
        .filter(|e| e.to == "p0")
        .cloned()
        .collect();
    assert_eq!(to_p0.len(), 2);

    let mut tampered = to_p0.clone();
    tampered[0].ciphertext[30] ^= 1;
    assert_eq!(
        clients[0].on_shares(&tampered),
        Err(SecAggError::Decrypt("p1".into()))
    );
    let mut relabelled = to_p0.clone();
    relabelled[0].from = "p2".into();
    relabelled[1].from = "p1".into();
    assert!(matches!(
        clients[0].on_shares(&relabelled),
        Err(SecAggError::Decrypt(_))
    ));
    let not_mine: Vec<Envelope> = out[1].iter().filter(|e| e.to == "p2").cloned().collect();
    assert_eq!(
        clients[0].on_shares(&not_mine),
        Err(SecAggError::Misrouted {
            from: "p1".into(),
            to: "p2".into()
        })
    );
    let twice = vec![to_p0[0].clone(), to_p0[0].clone()];
    assert!(matches!(
        clients[0].on_shares(&twice),
        Err(SecAggError::DuplicateEnvelope { .. })
    ));
    let mut short = to_p0.clone();
    short[1].ciphertext.truncate(ENVELOPE_LEN - 1);
    assert!(matches!(
        clients[0].on_shares(&short),
        Err(SecAggError::WrongLength {
            field: "ciphertext",
            ..
        })
    ));
    assert_eq!(clients[0].phase(), ClientPhase::SharedKeys);
    clients[0].on_shares(&to_p0).unwrap();
    assert_eq!(clients[0].phase(), ClientPhase::ReadyToMask);

    // The coordinator refuses an upload that misses a neighbour or is addressed wrongly.
    let mut server = ServerRound::new(p.clone());
    for k in &keys {
        server.on_keys(k.clone(), &c.roster).unwrap();
    }
    server.close_keys().unwrap();
    assert_eq!(
        server.on_shares("p1", out[1][..1].to_vec()),
        Err(SecAggError::MissingEnvelope {
            from: "p1".into(),
            to: "p2".into()
        })
    );
    assert!(matches!(
        server.on_shares("p1", out[2].clone()),
        Err(SecAggError::Misrouted { .. })
    ));
    server.on_shares("p1", out[1].clone()).unwrap();
    assert_eq!(
        server.on_shares("p1", out[1].clone()),
        Err(SecAggError::DuplicateUpload("p1".into()))
    );
}

#[test]
fn the_coordinator_checks_revealed_shares_and_refuses_to_unmask_without_enough() {
    let mut m = masked_round(4, 3, 16, 13);
    let ids = m.c.ids.clone();
    let mut sum = RunningSum::new(16);
    for y in &m.masked[..3] {
        sum.add_all(y);
    }
    // p3 sent its shares but not its input.
    let u3 = m.server.close_inputs(&ids[..3]).unwrap();
    for (i, cl) in m.clients[..3].iter_mut().enumerate() {
        let signature = cl.on_survivors(&u3, &m.c.identities[i]).unwrap();
        let signed = SurvivorSignature {
            partner_id: ids[i].clone(),
            signature,
        };
        m.server.on_signature(signed, &m.c.roster).unwrap();
    }
    assert_eq!(m.server.close_consistency().unwrap(), u3);
    let mut reveals: Vec<Vec<RevealedShare>> = m.clients[..3]
        .iter_mut()
        .enumerate()
        .map(|(i, cl)| {
            let signatures = m.server.signatures_for(&ids[i]).unwrap();
            cl.on_unmask(&signatures, &m.c.roster).unwrap()
        })
        .collect();
    // Wrong kind for p3 (dropped): the self mask would unmask its input if it arrived late.
    let mut wrong = reveals[0].clone();
    let p3 = wrong.iter_mut().find(|s| s.owner == "p3").unwrap();
    p3.kind = ShareKind::SelfMask;
    assert!(matches!(
        m.server.on_revealed("p0", wrong),
        Err(SecAggError::WrongShareKind { .. })
    ));
    let mut moved = reveals[0].clone();
    moved[0].x = 2;
    assert!(matches!(
        m.server.on_revealed("p0", moved),
        Err(SecAggError::WrongSharePoint {
            expected: 1,
            got: 2,
            ..
        })
    ));
    assert_eq!(
        m.server.on_revealed("p3", reveals[0].clone()),
        Err(SecAggError::UnexpectedSender("p3".into()))
    );
    m.server.on_revealed("p0", reveals.remove(0)).unwrap();
    m.server.on_revealed("p1", reveals.remove(0)).unwrap();

    let mut total = sum.clone().into_inner();
    assert!(matches!(
        m.server.unmask(&mut total),
        Err(SecAggError::NotEnoughShares {
            got: 2,
            need: 3,
            ..
        })
    ));
    assert_eq!(total, sum.as_slice(), "nothing removed");

    m.server.on_revealed("p2", reveals.remove(0)).unwrap();
    m.server.unmask(&mut total).unwrap();
    let mut expected = vec![0u32; 16];
    for x in &m.inputs[..3] {
        for (e, v) in expected.iter_mut().zip(x) {
            *e = e.wrapping_add(*v);
        }
    }
    assert_eq!(total, expected);
}

#[test]
fn clients_refuse_a_reordered_cohort_and_one_below_their_minimum() {
    let mut rng = StdRng::seed_from_u64(14);
    let c = cohort(5, &mut rng);
    let round = RoundId::new("job-1", 7, 0);
    let mut reordered = c.ids.clone();
    reordered.swap(0, 4);
    assert_eq!(
        RoundParams::new(round, reordered, 3, 4, 4).err(),
        Some(SecAggError::CohortNotCanonical)
    );
    let p = params(&c, 3, 4, 4);
    assert_eq!(
        ClientRound::new(
            p,
            "p0",
            &c.identities[0],
            ClientPolicy { min_partners: 6 },
            &mut rng
        )
        .err(),
        Some(SecAggError::BelowMinimum { got: 5, minimum: 6 })
    );
}

/// The server's side of the consistency check.
#[test]
fn the_coordinator_checks_survivor_signatures() {
    let mut m = masked_round(4, 3, 4, 19);
    let ids = m.c.ids.clone();
    let p = m.server.params().clone();
    assert!(matches!(
        m.server
            .on_signature(signatures(&m.c, &p, &ids)[0].clone(), &m.c.roster),
        Err(SecAggError::WrongPhase { .. })
    ));
    let u3 = m.server.close_inputs(&ids[..3]).unwrap();
    let good = signatures(&m.c, &p, &u3);
    // Over another set, from a non-survivor, twice.
    let other = signatures(&m.c, &p, &ids);
    assert_eq!(
        m.server.on_signature(other[0].clone(), &m.c.roster),
        Err(SecAggError::BadSurvivorSignature("p0".into()))
    );
    assert_eq!(
        m.server.on_signature(other[3].clone(), &m.c.roster),
        Err(SecAggError::SignerNotASurvivor("p3".into()))
    );
    m.server.on_signature(good[0].clone(), &m.c.roster).unwrap();
    assert_eq!(
        m.server.on_signature(good[0].clone(), &m.c.roster),
        Err(SecAggError::DuplicateSignature("p0".into()))
    );
    m.server.on_signature(good[1].clone(), &m.c.roster).unwrap();
    // Two of t = 3 signed: the check cannot close.
    assert_eq!(
        m.server.clone().close_consistency(),
        Err(SecAggError::QuorumLost {
            phase: "consistency",
            got: 2,
            need: 3
        })
    );
    m.server.on_signature(good[2].clone(), &m.c.roster).unwrap();
    assert_eq!(m.server.close_consistency().unwrap(), u3);
    assert_eq!(m.server.signatures_for("p0").unwrap(), good);
}

/// Partner p0 of a complete round of 5 with t = 3, after key agreement, and the envelopes
/// its four neighbours sent it.
fn p0_with_its_envelopes(seed: u64) -> (ClientRound, Vec<Envelope>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cohort(5, &mut rng);
    let p = params(&c, 3, 4, 4);
    let mut clients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..5 {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        keys.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        });
        clients.push(client);
    }
    let out: Vec<Vec<Envelope>> = clients
        .iter_mut()
        .map(|cl| cl.on_keys(&keys, &c.roster, &mut rng).unwrap())
        .collect();
    let to_p0: Vec<Envelope> = out.into_iter().flatten().filter(|e| e.to == "p0").collect();
    assert_eq!(to_p0.len(), 4);
    (clients.swap_remove(0), to_p0)
}

/// With itself, a client needs t of its closed neighbourhood: t − 1 envelopes suffice,
/// t − 2 do not.
#[test]
fn a_client_needs_exactly_t_minus_one_envelopes() {
    let t = 3;
    for k in 0..=4 {
        let (mut client, envelopes) = p0_with_its_envelopes(40);
        let got = client.on_shares(&envelopes[..k]);
        if k + 1 < t {
            assert_eq!(
                got,
                Err(SecAggError::BelowThreshold {
                    phase: "shares",
                    partner: "p0".into(),
                    got: k + 1,
                    need: t,
                }),
                "{k} envelopes"
            );
            assert_eq!(client.phase(), ClientPhase::SharedKeys);
        } else {
            assert_eq!(got, Ok(()), "{k} envelopes");
            assert_eq!(client.phase(), ClientPhase::ReadyToMask);
        }
    }
}

/// Every server call, dispatched by name, with arguments good enough for its phase guard.
struct Calls<'a> {
    keys: &'a SignedKeys,
    signature: &'a SurvivorSignature,
    roster: &'a Roster,
    ids: &'a [String],
}

const SERVER_CALLS: [&str; 12] = [
    "on_keys",
    "close_keys",
    "keys_for",
    "on_shares",
    "close_shares",
    "envelopes_for",
    "close_inputs",
    "on_signature",
    "close_consistency",
    "signatures_for",
    "on_revealed",
    "unmask",
];

impl Calls<'_> {
    fn call(&self, server: &mut ServerRound, name: &str) -> Result<(), SecAggError> {
        match name {
            "on_keys" => server.on_keys(self.keys.clone(), self.roster),
            "close_keys" => server.close_keys().map(drop),
            "keys_for" => server.keys_for("p0").map(drop),
            "on_shares" => server.on_shares("p0", Vec::new()),
            "close_shares" => server.close_shares().map(drop),
            "envelopes_for" => server.envelopes_for("p0").map(drop),
            "close_inputs" => server.close_inputs(self.ids).map(drop),
            "on_signature" => server.on_signature(self.signature.clone(), self.roster),
            "close_consistency" => server.close_consistency().map(drop),
            "signatures_for" => server.signatures_for("p0").map(drop),
            "on_revealed" => server.on_revealed("p0", Vec::new()),
            "unmask" => server.unmask(&mut [0u32; 4]),
            _ => unreachable!("{name}"),
        }
    }

    /// Every call not in `allowed` is refused with WrongPhase and leaves the phase alone.
    fn refused_except(&self, server: &mut ServerRound, allowed: &[&str]) {
        let phase = server.phase();
        for name in SERVER_CALLS.iter().filter(|n| !allowed.contains(n)) {
            assert_eq!(
                self.call(server, name),
                Err(SecAggError::WrongPhase {
                    call: name,
                    phase: phase.name(),
                }),
                "{name} in {}",
                phase.name()
            );
            assert_eq!(server.phase(), phase);
        }
    }
}

#[test]
fn the_coordinator_refuses_every_call_in_the_wrong_phase() {
    let mut rng = StdRng::seed_from_u64(21);
    let n = 3;
    let c = cohort(n, &mut rng);
    let p = params(&c, 2, 2, 4);
    let ids = c.ids.clone();
    let mut server = ServerRound::new(p.clone());
    let mut clients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        keys.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        });
        clients.push(client);
    }
    let signed = signatures(&c, &p, &ids);
    let calls = Calls {
        keys: &keys[0],
        signature: &signed[0],
        roster: &c.roster,
        ids: &ids,
    };

    calls.refused_except(&mut server, &["on_keys", "close_keys"]);
    for k in &keys {
        server.on_keys(k.clone(), &c.roster).unwrap();
    }
    server.close_keys().unwrap();
    assert_eq!(server.phase(), ServerPhase::CollectingShares);

    calls.refused_except(&mut server, &["keys_for", "on_shares", "close_shares"]);
    for (i, client) in clients.iter_mut().enumerate() {
        let envelopes = client
            .on_keys(&server.keys_for(&ids[i]).unwrap(), &c.roster, &mut rng)
            .unwrap();
        server.on_shares(&ids[i], envelopes).unwrap();
    }
    server.close_shares().unwrap();
    assert_eq!(server.phase(), ServerPhase::CollectingInputs);

    calls.refused_except(&mut server, &["keys_for", "envelopes_for", "close_inputs"]);
    let mut sum = RunningSum::new(4);
    let mut expected = vec![0u32; 4];
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .on_shares(&server.envelopes_for(&ids[i]).unwrap())
            .unwrap();
        let x = vec![i as u32 + 1; 4];
        let mut y = x.clone();
        client.mask(&mut y).unwrap();
        sum.add_all(&y);
        for (e, v) in expected.iter_mut().zip(&x) {
            *e = e.wrapping_add(*v);
        }
    }
    let u3 = server.close_inputs(&ids).unwrap();
    assert_eq!(server.phase(), ServerPhase::CheckingConsistency);

    calls.refused_except(
        &mut server,
        &["keys_for", "on_signature", "close_consistency"],
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let signature = client.on_survivors(&u3, &c.identities[i]).unwrap();
        let signed = SurvivorSignature {
            partner_id: ids[i].clone(),
            signature,
        };
        server.on_signature(signed, &c.roster).unwrap();
    }
    server.close_consistency().unwrap();
    assert_eq!(server.phase(), ServerPhase::CollectingReveals);

    calls.refused_except(
        &mut server,
        &["keys_for", "signatures_for", "on_revealed", "unmask"],
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let signatures = server.signatures_for(&ids[i]).unwrap();
        let shares = client.on_unmask(&signatures, &c.roster).unwrap();
        server.on_revealed(&ids[i], shares).unwrap();
    }
    let mut total = sum.into_inner();
    server.unmask(&mut total).unwrap();
    assert_eq!(total, expected);
}

/// The coordinator refuses an upload with an envelope claiming another sender, or one
/// addressed to the uploader itself; the honest upload is still accepted afterwards.
#[test]
fn the_coordinator_refuses_forged_and_self_addressed_envelopes() {
    let mut rng = StdRng::seed_from_u64(22);
    let c = cohort(3, &mut rng);
    let p = params(&c, 2, 2, 4);
    let mut server = ServerRound::new(p.clone());
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        let signed = SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        };
        server.on_keys(signed, &c.roster).unwrap();
        clients.push(client);
    }
    server.close_keys().unwrap();
    let keys = server.keys_for("p1").unwrap();
    let honest = clients[1].on_keys(&keys, &c.roster, &mut rng).unwrap();
    assert_eq!(honest.len(), 2);
    assert!(honest.iter().all(|e| e.from == "p1"));

    // p1 uploads an envelope to p0 that claims to come from p2.
    let mut forged = honest.clone();
    let k = forged.iter().position(|e| e.to == "p0").unwrap();
    forged[k].from = "p2".into();
    assert_eq!(
        server.on_shares("p1", forged),
        Err(SecAggError::Misrouted {
            from: "p2".into(),
            to: "p0".into()
        })
    );
    // p1 adds an envelope (of the right size) addressed to itself.
    let mut to_self = honest.clone();
    to_self.push(Envelope {
        from: "p1".into(),
        to: "p1".into(),
        ciphertext: honest[0].ciphertext.clone(),
    });
    assert_eq!(
        server.on_shares("p1", to_self),
        Err(SecAggError::Misrouted {
            from: "p1".into(),
            to: "p1".into()
        })
    );
    server.on_shares("p1", honest).unwrap();
    for i in [0, 2] {
        let keys = server.keys_for(&c.ids[i]).unwrap();
        let envelopes = clients[i].on_keys(&keys, &c.roster, &mut rng).unwrap();
        server.on_shares(&c.ids[i], envelopes).unwrap();
    }
    server.close_shares().unwrap();
    // p1 is relayed exactly its two honest envelopes, nothing to itself.
    let to_p1 = server.envelopes_for("p1").unwrap();
    assert_eq!(to_p1.len(), 2);
    assert!(to_p1.iter().all(|e| e.to == "p1" && e.from != "p1"));
}

/// A round of `n` driven to the reveals, every partner taking part except `silent`, which
/// advertises keys but never uploads its shares (so it is in U1 but not U2).
struct Revealing {
    c: Cohort,
    p: RoundParams,
    server: ServerRound,
    /// Each sharer's index and revealed shares.
    reveals: Vec<(usize, Vec<RevealedShare>)>,
    sum: Vec<u32>,
    expected: Vec<u32>,
}

fn revealing_round(
    n: usize,
    t: usize,
    degree: usize,
    silent: Option<usize>,
    seed: u64,
) -> Revealing {
    let d = 4;
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cohort(n, &mut rng);
    let p = params(&c, t, degree, d);
    let mut server = ServerRound::new(p.clone());
    let mut clients = Vec::new();
    for i in 0..n {
        let (client, advert) =
            ClientRound::new(p.clone(), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        let signed = SignedKeys {
            partner_id: c.ids[i].clone(),
            keys: advert,
        };
        server.on_keys(signed, &c.roster).unwrap();
        clients.push(client);
    }
    server.close_keys().unwrap();
    let sharers: Vec<usize> = (0..n).filter(|&i| Some(i) != silent).collect();
    for &i in &sharers {
        let keys = server.keys_for(&c.ids[i]).unwrap();
        let envelopes = clients[i].on_keys(&keys, &c.roster, &mut rng).unwrap();
        server.on_shares(&c.ids[i], envelopes).unwrap();
    }
    server.close_shares().unwrap();
    let mut sum = RunningSum::new(d);
    let mut expected = vec![0u32; d];
    for &i in &sharers {
        clients[i]
            .on_shares(&server.envelopes_for(&c.ids[i]).unwrap())
            .unwrap();
        let x = vec![3 * i as u32 + 1; d];
        let mut y = x.clone();
        clients[i].mask(&mut y).unwrap();
        sum.add_all(&y);
        for (e, v) in expected.iter_mut().zip(&x) {
            *e = e.wrapping_add(*v);
        }
    }
    let ids: Vec<String> = sharers.iter().map(|&i| c.ids[i].clone()).collect();
    let u3 = server.close_inputs(&ids).unwrap();
    for &i in &sharers {
        let signature = clients[i].on_survivors(&u3, &c.identities[i]).unwrap();
        let signed = SurvivorSignature {
            partner_id: c.ids[i].clone(),
            signature,
        };
        server.on_signature(signed, &c.roster).unwrap();
    }
    server.close_consistency().unwrap();
    let reveals = sharers
        .iter()
        .map(|&i| {
            let signatures = server.signatures_for(&c.ids[i]).unwrap();
            (i, clients[i].on_unmask(&signatures, &c.roster).unwrap())
        })
        .collect();
    Revealing {
        c,
        p,
        server,
        reveals,
        sum: sum.into_inner(),
        expected,
    }
}

impl Revealing {
    /// The honest reveals are accepted and unmask the sum.
    fn finish(mut self) {
        for (i, shares) in self.reveals {
            self.server.on_revealed(&self.c.ids[i], shares).unwrap();
        }
        self.server.unmask(&mut self.sum).unwrap();
        assert_eq!(self.sum, self.expected);
    }
}

/// A share "of" a partner outside U2 (it advertised keys but never shared) is refused, even
/// with the kind, point and value a dropped partner's share would have.
#[test]
fn the_coordinator_refuses_a_revealed_share_of_a_partner_outside_u2() {
    let mut r = revealing_round(4, 3, 3, Some(3), 23);
    let (i, honest) = r.reveals[0].clone();
    assert_eq!(i, 0);
    assert!(honest.iter().all(|s| s.owner != "p3"));
    let mut forged = honest.clone();
    forged.push(RevealedShare {
        owner: "p3".into(),
        kind: ShareKind::MaskKey,
        x: RoundParams::point(0),
        value: honest[0].value.clone(),
    });
    assert_eq!(
        r.server.on_revealed("p0", forged),
        Err(SecAggError::UnexpectedShare {
            from: "p0".into(),
            owner: "p3".into()
        })
    );
    assert!(r.server.revealers().is_empty());
    r.finish();
}

/// The same owner twice in one upload is refused, even with identical shares.
#[test]
fn the_coordinator_refuses_the_same_owner_twice_in_one_reveal() {
    let mut r = revealing_round(4, 3, 3, None, 25);
    let (i, honest) = r.reveals[1].clone();
    assert_eq!(i, 1);
    for k in 0..honest.len() {
        let mut twice = honest.clone();
        twice.push(honest[k].clone());
        assert_eq!(
            r.server.on_revealed("p1", twice),
            Err(SecAggError::UnexpectedShare {
                from: "p1".into(),
                owner: honest[k].owner.clone()
            })
        );
    }
    assert!(r.server.revealers().is_empty());
    r.finish();
}

/// On a sparse graph, a share of a U2 partner outside the revealer's closed neighbourhood
/// is refused.
#[test]
fn the_coordinator_refuses_a_revealed_share_from_outside_the_neighbourhood() {
    let mut r = revealing_round(10, 3, 4, None, 24);
    let far = (1..10).find(|&j| !r.p.graph().is_close(0, j)).unwrap();
    let (i, honest) = r.reveals[0].clone();
    assert_eq!(i, 0);
    let far_id = r.c.ids[far].clone();
    assert!(honest.iter().all(|s| s.owner != far_id));
    let mut forged = honest.clone();
    forged.push(RevealedShare {
        owner: far_id.clone(),
        kind: ShareKind::SelfMask,
        x: RoundParams::point(0),
        value: honest[0].value.clone(),
    });
    assert_eq!(
        r.server.on_revealed("p0", forged),
        Err(SecAggError::UnexpectedShare {
            from: "p0".into(),
            owner: far_id
        })
    );
    assert!(r.server.revealers().is_empty());
    r.finish();
}

/// A lying coordinator shows one member another value of a bound round setting (an adaptive
/// clip) than the rest: no member accepts the others' keys, so no shares go out and no input
/// is masked. Members shown the same value complete the keys phase; the graph is the
/// instance's whatever the value, so a chosen value cannot choose the neighbours.
#[test]
fn members_shown_different_bound_settings_cannot_agree_on_keys() {
    let mut rng = StdRng::seed_from_u64(61);
    let c = cohort(3, &mut rng);
    let p = params(&c, 2, 2, 8);
    let shown = |i: usize| {
        let value: f64 = if i == 2 { 2.0 } else { 0.5 };
        p.clone().bound_to("clip", &value.to_bits().to_le_bytes())
    };
    assert_eq!(shown(0).graph_spec(), p.graph_spec());
    assert_eq!(shown(2).graph_spec(), p.graph_spec());
    assert_ne!(shown(0).round(), shown(2).round());
    assert_eq!(shown(0).round(), shown(1).round());
    let mut clients = Vec::new();
    let mut all = Vec::new();
    for i in 0..3 {
        let (client, keys) =
            ClientRound::new(shown(i), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        all.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys,
        });
        clients.push(client);
    }
    // The coordinator hands every member every advertisement.
    for (i, client) in clients.iter_mut().enumerate() {
        let refused = client.on_keys(&all, &c.roster, &mut rng);
        assert!(
            matches!(refused, Err(SecAggError::BadSignature(_))),
            "member {i}: {refused:?}"
        );
    }
    // Shown the same value, the two honest members accept each other's keys.
    let mut rng = StdRng::seed_from_u64(62);
    let mut pair = Vec::new();
    let mut ads = Vec::new();
    for i in 0..2 {
        let (client, keys) =
            ClientRound::new(shown(0), &c.ids[i], &c.identities[i], POLICY, &mut rng).unwrap();
        ads.push(SignedKeys {
            partner_id: c.ids[i].clone(),
            keys,
        });
        pair.push(client);
    }
    for client in &mut pair {
        assert!(client.on_keys(&ads, &c.roster, &mut rng).is_ok());
    }
}
