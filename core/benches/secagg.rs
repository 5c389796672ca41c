//! Benchmarks of secure aggregation (`fedmark_core::secagg`).
//!
//! Run with short measurement times (the defaults below are already short):
//!
//! ```text
//! cargo bench -p fedmark-core --bench secagg -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! # `mask_expansion`
//!
//! Throughput (`Throughput::Bytes`) of [`prg::add_mask`] expanding a 32-byte seed into a mask of
//! d = 1,000,000 words (4 MB) added in place into a `&mut [u32]`, next to [`prg::keystream`]
//! filling a 4 MB byte buffer with the raw ChaCha20 keystream of the same `chacha20` crate under
//! the same key, nonce and counter. `add_mask` runs the same block loop as the multi-seed
//! [`prg::apply_masks`] that masking and unmasking use, so the ratio add_mask / keystream
//! shows what the word conversion and wrapping add cost on top of ChaCha20 itself (the figure
//! we report; target at least 50 %).
//!
//! # `mask_combination`
//!
//! A partner's total mask at n = 10 (5 masks added, 5 subtracted) combined into a 1M-word
//! vector by [`prg::apply_masks`] on all cores, next to the same ten raw keystreams written
//! one after another on one core: throughput in mask bytes per second.
//!
//! # `client_mask`
//!
//! Time of one [`ClientRound::mask`] for n = 10 partners on the complete graph (what
//! `recommended_degree(10)` gives) and d = 1,000,000 words: one self mask and 9 pairwise masks,
//! i.e. ten 4 MB mask expansions. This is a partner's whole per-round masking cost. `mask`
//! consumes the client's round state (masking twice is refused), so every iteration gets a
//! client freshly brought to `ReadyToMask` and a fresh copy of the input, both built outside
//! the timed routine.
//!
//! # `server_unmask`
//!
//! Time of [`ServerRound::unmask`] for N = 100 partners and d = 100,000 words with 0 %, 10 %
//! and 30 % of the partners dropping after sharing keys (they are in U2 but send no masked
//! input, so the coordinator must reconstruct their mask keys, redo their key agreements and
//! remove their pairwise masks on top of the survivors' self masks). The graph is the one the
//! API recommends at N = 100: `recommended_degree(100)` = 42, a sparse SecAgg+ graph (not the
//! complete graph, which it recommends only up to 64 partners), with
//! `recommended_threshold(42)` = 29 of each closed neighbourhood of 43. The whole round (keys,
//! shares, masked inputs summed, revealed shares) is set up once per dropout rate outside the
//! timed loop; each iteration unmasks a fresh copy of the masked sum. Before timing, one unmask
//! is checked against the plain wrapping sum of the survivors' inputs, so the benchmark cannot
//! silently measure a broken path.
//!
//! With a sparse graph a round only succeeds if every closed neighbourhood keeps t survivors,
//! so the dropouts are chosen spread over the graph (greedily, in random order, never letting a
//! neighbourhood fall below t); the setup also prints how often a uniformly random dropout set
//! of the same size would have made the round abort.
//!
//! # `consistency_check`
//!
//! The CPU the consistency check adds to one round at N = 200 and N = 1,000, all parties
//! together: N + 1 hashes of U3, N Ed25519 signatures over its digest, N verifications by the
//! coordinator and N × (k + 1)
//! by the partners (each checks its closed neighbourhood, k = `recommended_degree(N)`). In the
//! simulator all of it lands on the same cores; on real partners each pays 1/N of it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use fedmark_core::secagg::prg::{self, SEED_LEN};
use fedmark_core::secagg::{
    ClientPolicy, ClientRound, Roster, RoundId, RoundParams, ServerRound, SignedKeys,
    SurvivorSignature, generate_identity,
    keys::{sign_survivors, survivors_digest, verify_survivors},
    recommended_degree, recommended_threshold,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Words in the vectors of `mask_expansion` and `client_mask` (4 MB).
const BIG_D: usize = 1_000_000;
/// Partners in `client_mask`.
const CLIENT_N: usize = 10;
/// Partners in `server_unmask`.
const SERVER_N: usize = 100;
/// Words in the vectors of `server_unmask`.
const SERVER_D: usize = 100_000;
/// Dropout rates of `server_unmask`, in percent of the cohort.
const DROPOUT_PCT: [usize; 3] = [0, 10, 30];

/// A round in which every partner has advertised keys, uploaded its shares and opened its
/// neighbours' envelopes: the server is collecting inputs and every client can mask.
struct SharedRound {
    ids: Vec<String>,
    params: RoundParams,
    server: ServerRound,
    clients: Vec<ClientRound>,
    identities: Vec<SigningKey>,
    roster: Roster,
}

fn shared_round(n: usize, d: usize, rng: &mut StdRng) -> SharedRound {
    // Zero-padded: the cohort is in canonical (sorted) order.
    let ids: Vec<String> = (0..n).map(|i| format!("p{i:05}")).collect();
    let identities: Vec<SigningKey> = (0..n).map(|_| generate_identity(rng)).collect();
    let mut roster = Roster::new();
    for (id, key) in ids.iter().zip(&identities) {
        roster
            .insert(id.clone(), key.verifying_key())
            .expect("distinct partner ids");
    }
    let degree = recommended_degree(n);
    let round = RoundId::new("bench", rng.random(), 0);
    let params = RoundParams::new(round, ids.clone(), recommended_threshold(degree), degree, d)
        .expect("valid round parameters");

    let mut server = ServerRound::new(params.clone());
    let mut clients = Vec::with_capacity(n);
    for (id, identity) in ids.iter().zip(&identities) {
        let (client, keys) =
            ClientRound::new(params.clone(), id, identity, ClientPolicy::default(), rng)
                .expect("client joins the round");
        let signed = SignedKeys {
            partner_id: id.clone(),
            keys,
        };
        server
            .on_keys(signed, &roster)
            .expect("server accepts keys");
        clients.push(client);
    }
    server.close_keys().expect("key quorum");
    for (id, client) in ids.iter().zip(&mut clients) {
        let keys = server.keys_for(id).expect("keys to relay");
        let envelopes = client
            .on_keys(&keys, &roster, rng)
            .expect("client shares its secrets");
        server
            .on_shares(id, envelopes)
            .expect("server accepts shares");
    }
    server.close_shares().expect("share quorum");
    for (id, client) in ids.iter().zip(&mut clients) {
        let envelopes = server.envelopes_for(id).expect("envelopes to relay");
        client
            .on_shares(&envelopes)
            .expect("client opens its shares");
    }
    SharedRound {
        ids,
        params,
        server,
        clients,
        identities,
        roster,
    }
}

fn random_vector(d: usize, rng: &mut StdRng) -> Vec<u32> {
    (0..d).map(|_| rng.random()).collect()
}

fn add_into(acc: &mut [u32], v: &[u32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*x);
    }
}

fn shuffled(n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

/// The closed neighbourhood of every partner.
fn neighbourhoods(params: &RoundParams) -> Vec<Vec<usize>> {
    (0..params.len())
        .map(|i| params.graph().closed_neighbourhood(i))
        .collect()
}

/// Whether every closed neighbourhood keeps at least t partners outside `dropped`.
fn round_survives(hoods: &[Vec<usize>], t: usize, dropped: &[bool]) -> bool {
    hoods
        .iter()
        .all(|h| h.iter().filter(|&&j| !dropped[j]).count() >= t)
}

/// Picks `count` partners to drop, in random order, skipping any whose loss would leave some
/// closed neighbourhood with fewer than t partners (the graph is undirected, so the
/// neighbourhoods containing c are those of c's closed neighbourhood).
fn spread_dropouts(params: &RoundParams, count: usize, rng: &mut StdRng) -> Vec<bool> {
    let n = params.len();
    let t = params.threshold();
    let hoods = neighbourhoods(params);
    // A greedy pass in one random order may get stuck short of `count` on some graphs; try a
    // bounded number of orders.
    let mut best = (0, vec![false; n]);
    for _ in 0..200 {
        let mut lost = vec![0usize; n];
        let mut dropped = vec![false; n];
        let mut chosen = 0;
        for c in shuffled(n, rng) {
            if chosen == count {
                break;
            }
            if hoods[c].iter().all(|&j| hoods[j].len() - lost[j] > t) {
                dropped[c] = true;
                chosen += 1;
                for &j in &hoods[c] {
                    lost[j] += 1;
                }
            }
        }
        if chosen > best.0 {
            best = (chosen, dropped);
        }
        if best.0 == count {
            break;
        }
    }
    let (chosen, dropped) = best;
    assert_eq!(
        chosen, count,
        "could not spread {count} dropouts over the graph"
    );
    assert!(round_survives(&hoods, t, &dropped));
    dropped
}

/// Of `trials` uniformly random sets of `count` dropouts, how many would make the round abort.
fn random_dropout_aborts(
    params: &RoundParams,
    count: usize,
    trials: usize,
    rng: &mut StdRng,
) -> usize {
    let n = params.len();
    let hoods = neighbourhoods(params);
    (0..trials)
        .filter(|_| {
            let mut dropped = vec![false; n];
            for &i in &shuffled(n, rng)[..count] {
                dropped[i] = true;
            }
            !round_survives(&hoods, params.threshold(), &dropped)
        })
        .count()
}

fn mask_expansion(c: &mut Criterion) {
    let seed = [7u8; SEED_LEN];
    let mut words = vec![0u32; BIG_D];
    let mut bytes = vec![0u8; 4 * BIG_D];

    // The mask is the keystream read as little-endian words.
    prg::add_mask(&seed, &mut words);
    prg::keystream(&seed, &mut bytes);
    let same = words
        .iter()
        .zip(bytes.chunks_exact(4))
        .all(|(w, b)| *w == u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    assert!(
        same,
        "mask_expansion sanity check failed: add_mask into zeros differs from the keystream"
    );

    let mut group = c.benchmark_group("mask_expansion");
    group.throughput(Throughput::Bytes((4 * BIG_D) as u64));
    group.sample_size(30);
    group.bench_function("add_mask_1M_words", |b| {
        b.iter(|| prg::add_mask(black_box(&seed), black_box(&mut words)));
    });
    group.bench_function("chacha20_keystream_4MB", |b| {
        b.iter(|| prg::keystream(black_box(&seed), black_box(&mut bytes)));
    });
    group.finish();

    // A partner's whole mask at n = 10: ten keystreams combined into one vector, on all
    // cores, against ten raw keystreams one after another on one core.
    let add: Vec<[u8; SEED_LEN]> = (0..CLIENT_N as u8 / 2).map(|i| [i; SEED_LEN]).collect();
    let sub: Vec<[u8; SEED_LEN]> = (CLIENT_N as u8 / 2..CLIENT_N as u8)
        .map(|i| [i; SEED_LEN])
        .collect();
    let mut group = c.benchmark_group("mask_combination");
    group.throughput(Throughput::Bytes((4 * BIG_D * CLIENT_N) as u64));
    group.sample_size(20);
    group.bench_function("apply_masks_10_seeds_1M_words_all_cores", |b| {
        b.iter(|| prg::apply_masks(black_box(&mut words), &add, &sub));
    });
    group.bench_function("chacha20_keystream_10x4MB_one_core", |b| {
        b.iter(|| {
            for seed in add.iter().chain(&sub) {
                prg::keystream(black_box(seed), black_box(&mut bytes));
            }
        });
    });
    group.finish();
}

fn client_mask(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let input = random_vector(BIG_D, &mut rng);
    // Clients ready to mask, refilled with a whole new round when empty: each is used once.
    let mut ready: Vec<ClientRound> = Vec::new();

    let mut group = c.benchmark_group("client_mask");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("complete_graph", "n10_d1M"), |b| {
        b.iter_batched(
            || {
                if ready.is_empty() {
                    ready = shared_round(CLIENT_N, BIG_D, &mut rng).clients;
                }
                let client = ready.pop().expect("a client ready to mask");
                (client, input.clone())
            },
            |(mut client, mut y)| {
                client.mask(&mut y).expect("client masks its input");
                // Returned so that dropping them is not timed.
                (client, y)
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// A round at the reveal phase, its sanity check passed: the server can unmask `masked_sum`.
struct RevealedRound {
    server: ServerRound,
    masked_sum: Vec<u32>,
}

fn revealed_round(dropout_pct: usize, rng: &mut StdRng) -> RevealedRound {
    let SharedRound {
        ids,
        params,
        mut server,
        mut clients,
        identities,
        roster,
    } = shared_round(SERVER_N, SERVER_D, rng);
    let count = SERVER_N * dropout_pct / 100;
    if count > 0 {
        let aborts = random_dropout_aborts(&params, count, 1000, rng);
        eprintln!(
            "server_unmask setup: N = {SERVER_N}, degree {}, t = {}; {count} dropouts spread \
             over the graph ({aborts} of 1000 uniformly random sets of {count} would abort)",
            params.graph().degree(),
            params.threshold(),
        );
    }
    let dropped = spread_dropouts(&params, count, rng);

    // Survivors mask and send their inputs; the dropped partners send nothing.
    let mut masked_sum = vec![0u32; SERVER_D];
    let mut expected = vec![0u32; SERVER_D];
    let mut survivors = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        if dropped[i] {
            continue;
        }
        let x = random_vector(SERVER_D, rng);
        let mut y = x.clone();
        client.mask(&mut y).expect("survivor masks its input");
        add_into(&mut masked_sum, &y);
        add_into(&mut expected, &x);
        survivors.push(ids[i].clone());
    }
    let u3 = server
        .close_inputs(&survivors)
        .expect("input quorum after dropouts");
    for (i, client) in clients.iter_mut().enumerate() {
        if dropped[i] {
            continue;
        }
        let signature = client
            .on_survivors(&u3, &identities[i])
            .expect("survivor signs U3");
        let signed = SurvivorSignature {
            partner_id: ids[i].clone(),
            signature,
        };
        server
            .on_signature(signed, &roster)
            .expect("server accepts the signature");
    }
    server.close_consistency().expect("consistency quorum");
    for (i, client) in clients.iter_mut().enumerate() {
        if dropped[i] {
            continue;
        }
        let signatures = server.signatures_for(&ids[i]).expect("signatures to relay");
        let shares = client
            .on_unmask(&signatures, &roster)
            .expect("survivor reveals its shares");
        server
            .on_revealed(&ids[i], shares)
            .expect("server accepts revealed shares");
    }

    let mut check = masked_sum.clone();
    if let Err(e) = server.unmask(&mut check) {
        panic!("server_unmask sanity check failed at {dropout_pct} % dropout: unmask failed: {e}");
    }
    if check != expected {
        let first = check
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "server_unmask sanity check failed at {dropout_pct} % dropout: unmasked sum differs \
             from the plain sum of the {} survivors' inputs (first at word {first}: {} != {})",
            u3.len(),
            check[first],
            expected[first],
        );
    }
    RevealedRound { server, masked_sum }
}

fn server_unmask(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut group = c.benchmark_group("server_unmask");
    group.sample_size(10);
    for pct in DROPOUT_PCT {
        let round = revealed_round(pct, &mut rng);
        group.bench_function(BenchmarkId::new("n100_d100k_dropout_pct", pct), |b| {
            b.iter_batched(
                || round.masked_sum.clone(),
                |mut sum| {
                    round.server.unmask(&mut sum).expect("unmask succeeds");
                    sum
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// The consistency check's whole CPU cost in one round of N partners, as all parties pay it
/// together: every survivor signs U3, the coordinator verifies N signatures, and every
/// survivor verifies the signatures of its closed neighbourhood (degree + 1 of them, the
/// recommended SecAgg+ degree). Signing and verifying only; the check adds one round trip.
fn consistency_check(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut group = c.benchmark_group("consistency_check");
    group.sample_size(10);
    for n in [200usize, 1000] {
        let ids: Vec<String> = (0..n).map(|i| format!("p{i:05}")).collect();
        let keys: Vec<SigningKey> = (0..n).map(|_| generate_identity(&mut rng)).collect();
        let mut roster = Roster::new();
        for (id, key) in ids.iter().zip(&keys) {
            roster
                .insert(id.clone(), key.verifying_key())
                .expect("distinct partner ids");
        }
        let round = RoundId::new("bench", n as u64, 0);
        let survivors: Vec<&str> = ids.iter().map(String::as_str).collect();
        let close = recommended_degree(n) + 1;
        group.bench_function(BenchmarkId::new("sign_and_verify_all", n), |b| {
            b.iter(|| {
                // Every party hashes the set once (the coordinator and each partner).
                let mut digest = [0u8; 32];
                for _ in 0..=n {
                    digest = survivors_digest(&round, &survivors);
                }
                let signed: Vec<SurvivorSignature> = ids
                    .iter()
                    .zip(&keys)
                    .map(|(id, key)| SurvivorSignature {
                        partner_id: id.clone(),
                        signature: sign_survivors(key, &digest),
                    })
                    .collect();
                // The coordinator checks each once; each partner checks its neighbourhood's.
                for s in &signed {
                    verify_survivors(&roster, &digest, s).expect("valid");
                }
                for i in 0..n {
                    for s in signed.iter().cycle().skip(i).take(close) {
                        verify_survivors(&roster, &digest, s).expect("valid");
                    }
                }
                black_box(signed)
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = mask_expansion, client_mask, server_unmask, consistency_check
}
criterion_main!(benches);
