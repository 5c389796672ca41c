//! Fuzz entry points: one function per decoder of untrusted bytes, shared by the cargo-fuzz
//! targets in `fuzz/` (nightly, libFuzzer) and by the stable `tests/tests/fuzz_corpus.rs`,
//! which replays the committed corpus so CI checks it without a nightly toolchain.
//!
//! Every `pub fn <target>(data: &[u8])` must return normally on any input: a decoder that
//! refuses the bytes with a typed error is fine, a panic is a bug. The only panics written
//! here are violated properties (round trips, counts), each with a message naming the
//! property, and a broken fixture (a bug of this module, never of the input).
//!
//! The protocol targets ([`client_message`], [`server_message`]) run against a small real
//! secure-aggregation round ([`Fixture`]): three partners `p0`, `p1`, `p2` with a generated
//! roster, everything derived from fixed seeds so that the seed corpus made by
//! [`client_message_seeds`] and [`server_message_seeds`] carries valid signatures and
//! ciphertexts for exactly this round. The fuzzed message always comes from (or goes to)
//! `p0`, with `p1` and `p2` having already answered honestly.

use std::io::Write;
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use fedmark_core::aggregate::{Progress, RunningSum};
use fedmark_core::audit::{AuditChain, AuditRecord, verify};
use fedmark_core::guard::RoundGuard;
use fedmark_core::secagg::{
    ClientPolicy, ClientRound, Envelope, KeyAdvertisement, RevealedShare, Roster, RoundId,
    RoundParams, ServerRound, SignedKeys, SurvivorSignature, generate_identity, valid_partner_id,
};
use fedmark_core::shape::RoundShape;
use fedmark_core::spec::JobSpec;
use fedmark_proto::convert;
use fedmark_proto::{ClientMessage, ServerMessage, client_message, server_message};
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

/// `JobSpec::from_toml` on the bytes (lossy UTF-8); a spec that parses must survive
/// `to_toml` and parse back equal.
pub fn spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(spec) = JobSpec::from_toml(&text) else {
        return;
    };
    let again = match spec.to_toml() {
        Ok(t) => t,
        Err(e) => panic!("spec round trip: to_toml failed on a spec that parsed: {e}"),
    };
    match JobSpec::from_toml(&again) {
        Ok(back) => assert_eq!(
            back, spec,
            "spec round trip: re-parsed spec differs\n--- to_toml ---\n{again}"
        ),
        Err(e) => panic!("spec round trip: to_toml output does not parse: {e}\n{again}"),
    }
}

/// `Roster::from_toml` on the bytes (lossy UTF-8); a roster that parses must survive
/// `to_toml` and parse back equal.
pub fn roster(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(roster) = Roster::from_toml(&text) else {
        return;
    };
    let again = match roster.to_toml() {
        Ok(t) => t,
        Err(e) => panic!("roster round trip: to_toml failed on a roster that parsed: {e}"),
    };
    match Roster::from_toml(&again) {
        Ok(back) => assert_eq!(back, roster, "roster round trip: re-parsed roster differs"),
        Err(e) => panic!("roster round trip: to_toml output does not parse: {e}\n{again}"),
    }
}

/// Writes `data` to a fresh temporary file and hands its path to `load`. A failure to make
/// the file is the machine's problem, not the input's: the run is skipped.
fn with_temp_file(data: &[u8], load: impl FnOnce(&std::path::Path)) {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    load(file.path());
}

/// `CoordinatorConfig::load` on the bytes written to a temporary file; a config that loads
/// must also pass `validate` again.
pub fn coordinator_config(data: &[u8]) {
    with_temp_file(data, |path| {
        if let Ok(cfg) = fedmark_coordinator::config::CoordinatorConfig::load(path) {
            assert!(
                cfg.validate().is_ok(),
                "coordinator config: load returned a config that validate refuses"
            );
        }
    });
}

/// `ClientConfig::load` on the bytes written to a temporary file; a config that loads must
/// also pass `validate` again.
pub fn client_config(data: &[u8]) {
    with_temp_file(data, |path| {
        if let Ok(cfg) = fedmark_client::config::ClientConfig::load(path) {
            assert!(
                cfg.validate().is_ok(),
                "client config: load returned a config that validate refuses"
            );
        }
    });
}

/// The spec [`csv_rows`] loads with: two numeric columns, one categorical column with a
/// vocabulary and one hashed, label `y`.
const CSV_SPEC: &str = r#"
[job]
name = "fuzz"
purpose = "fuzz"
rounds = 1
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job", "marital"]
vocabulary = { job = ["admin.", "management", "technician"] }
hash_buckets = 8
[model]
kind = "logistic"
"#;

fn csv_spec() -> &'static JobSpec {
    static SPEC: OnceLock<JobSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        JobSpec::from_toml(CSV_SPEC).unwrap_or_else(|e| panic!("fuzz fixture: CSV spec: {e}"))
    })
}

/// Records after the header as the loader's CSV reader sees them (unreadable ones
/// included), counted independently of the loader.
fn csv_records(data: &[u8]) -> u64 {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(data);
    if reader.byte_headers().is_err() {
        return 0;
    }
    let mut record = csv::ByteRecord::new();
    let mut n = 0u64;
    // Every record consumes at least one byte; the bound only guards this counter.
    for _ in 0..=data.len() {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) | Err(_) => n += 1,
        }
    }
    n
}

/// `fedmark_client::data::load_reader` over the bytes as a CSV with a fixed spec: Ok or a
/// typed error, and when Ok, rows kept (train + holdout) + rows skipped = records read.
pub fn csv_rows(data: &[u8]) {
    use fedmark_client::data::{HoldoutSplit, load_reader};
    let split = HoldoutSplit {
        fraction: 0.2,
        seed: 7,
    };
    let Ok(loaded) = load_reader(data, "fuzz.csv", csv_spec(), split) else {
        return;
    };
    let kept = (loaded.train.len() + loaded.holdout.len()) as u64;
    let skipped = loaded.skipped_total();
    let read = csv_records(data);
    assert_eq!(
        kept + skipped,
        read,
        "csv rows: kept ({kept}) + skipped ({skipped}) != records read ({read})"
    );
}

/// `audit::verify(text, None)` on the bytes (lossy UTF-8); for a log that verifies, a
/// record appended with `AuditChain::resume` from its last record must verify too, with
/// the new record as head.
pub fn audit_log(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(verified) = verify(&text, None) else {
        return;
    };
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let last = if body.is_empty() {
        None
    } else {
        let line = body.rsplit('\n').next().unwrap_or(body);
        let n = usize::try_from(verified.records).unwrap_or(usize::MAX);
        match AuditRecord::parse_line(line, n) {
            Ok(r) => Some(r),
            Err(e) => panic!("audit append: the last line of a verified log does not parse: {e}"),
        }
    };
    let mut chain = AuditChain::resume("fuzz", last.as_ref());
    let record = match chain.append(1, "fuzz_appended", json!({"n": verified.records})) {
        Ok(r) => r,
        Err(e) => panic!("audit append: append with object data failed: {e}"),
    };
    let mut extended = String::with_capacity(body.len() + 256);
    extended.push_str(body);
    if !body.is_empty() {
        extended.push('\n');
    }
    extended.push_str(&record.to_line());
    extended.push('\n');
    match verify(&extended, Some(chain.head())) {
        Ok(v) => assert_eq!(
            v.records,
            verified.records + 1,
            "audit append: record count after appending"
        ),
        Err(e) => panic!("audit append: a verified log with a resumed record fails: {e}"),
    }
}

/// Words of the fixture round's vector.
const VECTOR_LEN: usize = 8;
/// Partners of the fixture round.
const PARTNERS: usize = 3;
const POLICY: ClientPolicy = ClientPolicy { min_partners: 1 };

/// A real three-partner secure-aggregation round, run honestly once from fixed seeds, with
/// the server's state saved at each phase just before `p0` answers.
pub struct Fixture {
    /// The round's parameters (job `fuzz-job`, round 1, attempt 0; t = 2 of 3).
    pub params: RoundParams,
    /// The roster of `p0`, `p1`, `p2`.
    pub roster: Roster,
    identities: Vec<SigningKey>,
    /// Server collecting keys: `p1` and `p2` in, `p0` missing.
    pub server_keys: ServerRound,
    /// Server collecting shares: all keys in, shares of `p1` and `p2` in.
    pub server_shares: ServerRound,
    /// Server checking consistency: the signatures of `p1` and `p2` in.
    pub server_signatures: ServerRound,
    /// Server collecting reveals: all three inputs summed, reveals of `p1` and `p2` in.
    pub server_reveals: ServerRound,
    /// Sum of the three masked inputs.
    pub masked_sum: Vec<u32>,
    /// What `p0` sent: keys, shares, masked input, reveals.
    p0_keys: KeyAdvertisement,
    p0_envelopes: Vec<Envelope>,
    p0_input: Vec<u32>,
    p0_reveals: Vec<RevealedShare>,
    /// What the server sent `p0`: its key set, its envelopes, the survivors.
    keys_for_p0: Vec<SignedKeys>,
    envelopes_for_p0: Vec<Envelope>,
    survivors: Vec<String>,
    /// Every survivor's signature over the survivor set.
    signatures: Vec<SurvivorSignature>,
}

/// The round id of the fixture.
pub fn fixture_round() -> RoundId {
    RoundId::new("fuzz-job", 1, 0)
}

fn client_rng(i: usize) -> StdRng {
    StdRng::seed_from_u64(0xF0_22 + i as u64)
}

fn input_of(i: usize) -> Vec<u32> {
    (0..VECTOR_LEN).map(|k| (i * 100 + k) as u32).collect()
}

fn id_of(i: usize) -> String {
    format!("p{i}")
}

impl Fixture {
    fn build() -> Result<Self, String> {
        let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
        let mut id_rng = StdRng::seed_from_u64(0x1D);
        let identities: Vec<SigningKey> = (0..PARTNERS)
            .map(|_| generate_identity(&mut id_rng))
            .collect();
        let ids: Vec<String> = (0..PARTNERS).map(id_of).collect();
        let mut roster = Roster::new();
        for (id, key) in ids.iter().zip(&identities) {
            roster
                .insert(id.clone(), key.verifying_key())
                .map_err(|x| e("roster", &x))?;
        }
        let round = fixture_round();
        let params = RoundParams::new(round, ids.clone(), 2, PARTNERS - 1, VECTOR_LEN)
            .map_err(|x| e("params", &x))?;
        let mut rngs: Vec<StdRng> = (0..PARTNERS).map(client_rng).collect();
        let mut clients = Vec::new();
        let mut adverts = Vec::new();
        for i in 0..PARTNERS {
            let (c, a) = ClientRound::new(
                params.clone(),
                &ids[i],
                &identities[i],
                POLICY,
                &mut rngs[i],
            )
            .map_err(|x| e("client new", &x))?;
            clients.push(c);
            adverts.push(a);
        }
        let mut server = ServerRound::new(params.clone());
        for i in 1..PARTNERS {
            server
                .on_keys(
                    SignedKeys {
                        partner_id: ids[i].clone(),
                        keys: adverts[i].clone(),
                    },
                    &roster,
                )
                .map_err(|x| e("on_keys", &x))?;
        }
        let server_keys = server.clone();
        server
            .on_keys(
                SignedKeys {
                    partner_id: ids[0].clone(),
                    keys: adverts[0].clone(),
                },
                &roster,
            )
            .map_err(|x| e("on_keys p0", &x))?;
        server.close_keys().map_err(|x| e("close_keys", &x))?;
        let mut envelopes = Vec::new();
        let mut keys_for_p0 = Vec::new();
        for i in 0..PARTNERS {
            let keys = server.keys_for(&ids[i]).map_err(|x| e("keys_for", &x))?;
            let env = clients[i]
                .on_keys(&keys, &roster, &mut rngs[i])
                .map_err(|x| e("client on_keys", &x))?;
            if i == 0 {
                keys_for_p0 = keys;
            }
            envelopes.push(env);
        }
        for i in 1..PARTNERS {
            server
                .on_shares(&ids[i], envelopes[i].clone())
                .map_err(|x| e("on_shares", &x))?;
        }
        let server_shares = server.clone();
        server
            .on_shares(&ids[0], envelopes[0].clone())
            .map_err(|x| e("on_shares p0", &x))?;
        server.close_shares().map_err(|x| e("close_shares", &x))?;
        let mut sum = RunningSum::new(VECTOR_LEN);
        let mut envelopes_for_p0 = Vec::new();
        let mut p0_input = Vec::new();
        for i in 0..PARTNERS {
            let env = server
                .envelopes_for(&ids[i])
                .map_err(|x| e("envelopes_for", &x))?;
            clients[i]
                .on_shares(&env)
                .map_err(|x| e("client on_shares", &x))?;
            let mut y = input_of(i);
            clients[i].mask(&mut y).map_err(|x| e("mask", &x))?;
            sum.add_all(&y);
            if i == 0 {
                envelopes_for_p0 = env;
                p0_input = y;
            }
        }
        let survivors = server
            .close_inputs(&ids)
            .map_err(|x| e("close_inputs", &x))?;
        let mut signatures = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let signature = c
                .on_survivors(&survivors, &identities[i])
                .map_err(|x| e("on_survivors", &x))?;
            signatures.push(SurvivorSignature {
                partner_id: ids[i].clone(),
                signature,
            });
        }
        for signed in signatures.iter().skip(1) {
            server
                .on_signature(signed.clone(), &roster)
                .map_err(|x| e("on_signature", &x))?;
        }
        let server_signatures = server.clone();
        server
            .on_signature(signatures[0].clone(), &roster)
            .map_err(|x| e("on_signature p0", &x))?;
        server
            .close_consistency()
            .map_err(|x| e("close_consistency", &x))?;
        let mut reveals = Vec::new();
        for c in &mut clients {
            reveals.push(
                c.on_unmask(&signatures, &roster)
                    .map_err(|x| e("on_unmask", &x))?,
            );
        }
        for i in 1..PARTNERS {
            server
                .on_revealed(&ids[i], reveals[i].clone())
                .map_err(|x| e("on_revealed", &x))?;
        }
        let server_reveals = server.clone();
        // Check the fixture is a real round: with p0's reveals too, the sum unmasks.
        let mut check = server.clone();
        check
            .on_revealed(&ids[0], reveals[0].clone())
            .map_err(|x| e("on_revealed p0", &x))?;
        let mut words = sum.as_slice().to_vec();
        check.unmask(&mut words).map_err(|x| e("unmask", &x))?;
        let expected: Vec<u32> = (0..VECTOR_LEN)
            .map(|k| (0..PARTNERS).map(|i| input_of(i)[k]).sum())
            .collect();
        if words != expected {
            return Err("the fixture round does not unmask to the sum of its inputs".into());
        }
        Ok(Self {
            params,
            roster,
            identities,
            server_keys,
            server_shares,
            server_signatures,
            server_reveals,
            masked_sum: sum.into_inner(),
            p0_keys: adverts[0].clone(),
            p0_envelopes: envelopes[0].clone(),
            p0_input,
            p0_reveals: reveals[0].clone(),
            keys_for_p0,
            envelopes_for_p0,
            survivors,
            signatures,
        })
    }

    /// The fixture, built once per process.
    pub fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            Fixture::build()
                .unwrap_or_else(|e| panic!("fuzz fixture: secure-aggregation round: {e}"))
        })
    }

    /// `p0`'s client, rebuilt from its seed and brought to `phase` by the honest messages
    /// (0: keys advertised, 1: shares sent, 2: input masked).
    fn p0_at(&self, phase: u8) -> ClientRound {
        let mut rng = client_rng(0);
        let result = ClientRound::new(
            self.params.clone(),
            "p0",
            &self.identities[0],
            POLICY,
            &mut rng,
        )
        .and_then(|(mut c, _)| {
            if phase >= 1 {
                c.on_keys(&self.keys_for_p0, &self.roster, &mut rng)?;
            }
            if phase >= 2 {
                c.on_shares(&self.envelopes_for_p0)?;
                let mut y = input_of(0);
                c.mask(&mut y)?;
            }
            if phase >= 3 {
                c.on_survivors(&self.survivors, &self.identities[0])?;
            }
            Ok(c)
        });
        result.unwrap_or_else(|e| panic!("fuzz fixture: rebuilding p0: {e}"))
    }
}

fn proto_keys(k: &KeyAdvertisement) -> fedmark_proto::KeyAdvertisement {
    fedmark_proto::KeyAdvertisement::new(&fixture_rref(), k)
}

fn proto_envelopes(envs: &[Envelope]) -> Vec<fedmark_proto::Envelope> {
    envs.iter().cloned().map(Into::into).collect()
}

fn fixture_rref() -> fedmark_proto::RoundRef {
    fedmark_proto::RoundRef {
        job_id: "fuzz-job".into(),
        round: 1,
        attempt: 0,
    }
}

/// Decodes a `ClientMessage` and feeds it, as from `p0`, to the core state the coordinator
/// feeds it to (as `coordinator/src/round.rs` does, without the round-reference filter so
/// that every message reaches the core): `Keys` → `KeyAdvertisement::from_slices` +
/// `ServerRound::on_keys` (then `close_keys`, `keys_for`); `Shares` → `Envelope::new` +
/// `on_shares` (then `close_shares`, `envelopes_for`); `Unmask` → `RevealedShare::new` + `on_revealed` (then
/// `unmask` of the real masked sum); `Hello` → the partner-id check and roster lookup;
/// `OfferReply` → the `offer_refused` audit record built from the reason, which must verify.
pub fn client_message(data: &[u8]) {
    let Ok(msg) = ClientMessage::decode(data) else {
        return;
    };
    let Some(body) = msg.body else {
        return;
    };
    let fx = Fixture::get();
    match body {
        client_message::Body::Hello(h) => {
            if valid_partner_id(&h.partner_id) {
                let _ = fx.roster.get(&h.partner_id);
            }
        }
        client_message::Body::OfferReply(r) => {
            let mut chain = AuditChain::new("coordinator");
            let data = json!({"job": r.job_id, "partner": "p0", "reason": r.reason});
            match chain.append(0, "offer_refused", data) {
                Ok(record) => {
                    let line = record.to_line();
                    if let Err(e) = verify(&line, Some(chain.head())) {
                        panic!("offer reply: the audit record of a refusal does not verify: {e}");
                    }
                }
                Err(e) => panic!("offer reply: audit append with object data failed: {e}"),
            }
        }
        client_message::Body::Keys(k) => {
            let Ok(keys) = k.keys() else {
                return;
            };
            let mut server = fx.server_keys.clone();
            let signed = SignedKeys {
                partner_id: "p0".into(),
                keys,
            };
            if server.on_keys(signed, &fx.roster).is_ok() && server.close_keys().is_ok() {
                for id in fx.params.cohort() {
                    let _ = server.keys_for(id);
                }
            }
        }
        client_message::Body::Shares(sh) => {
            let Ok(envelopes) = convert::all::<_, Envelope>(sh.envelopes) else {
                return;
            };
            let mut server = fx.server_shares.clone();
            if server.on_shares("p0", envelopes).is_ok() && server.close_shares().is_ok() {
                for id in fx.params.cohort() {
                    let _ = server.envelopes_for(id);
                }
            }
        }
        client_message::Body::SurvivorSignature(sig) => {
            let Ok(signed) = SurvivorSignature::new("p0".into(), &sig.signature) else {
                return;
            };
            let mut server = fx.server_signatures.clone();
            if server.on_signature(signed, &fx.roster).is_ok() {
                assert!(
                    server.close_consistency().is_ok(),
                    "survivor signature: three valid signatures do not close the check"
                );
            }
        }
        client_message::Body::Unmask(u) => {
            let Ok(shares) = convert::all::<_, RevealedShare>(u.shares) else {
                return;
            };
            let mut server = fx.server_reveals.clone();
            if server.on_revealed("p0", shares).is_ok() {
                let mut words = fx.masked_sum.clone();
                let before = words.clone();
                if server.unmask(&mut words).is_err() {
                    assert_eq!(words, before, "unmask: a failed unmask changed the sum");
                }
            }
        }
    }
}

/// Feeds `body` to a fresh `Participant` for `p0` that accepted the fuzz job (id `fuzz-job`,
/// [`fuzz_spec`]) and drains what it asks for: the partner's checks of a round start (job,
/// cohort, floor, guard, shape, standardisation) and of every secure-aggregation message, as
/// production runs them. A violation is an error; nothing may panic.
fn participant_takes(body: &server_message::Body, fx: &Fixture) {
    use fedmark_client::identity::Identity;
    use fedmark_client::participant::{AcceptedJob, Participant};
    use fedmark_client::rounds::RoundRecords;
    use server_message::Body;
    let spec = fuzz_spec();
    let identity = Identity {
        key: fx.identities[0].clone(),
        roster: std::sync::Arc::new(fx.roster.clone()),
    };
    let mut p = Participant::new("p0".into(), Some(identity));
    p.job_accepted(AcceptedJob {
        job_id: "fuzz-job".into(),
        spec: spec.clone(),
        num_params: 3,
        cohort_floor: 1,
        threshold_floor: None,
    });
    let mut guards = RoundRecords::default();
    if guards.accept("fuzz-job", spec).is_err() {
        return;
    }
    let _ = match body.clone() {
        Body::RoundStart(s) if s.cohort.len() <= MAX_FUZZ_COHORT => {
            p.on_round_start(s, &mut guards)
        }
        Body::Keys(k) => p.on_keys(k),
        Body::Shares(s) => p.on_shares(s),
        Body::SurvivorCheck(c) => p.on_survivor_check(c),
        Body::Unmask(u) => p.on_unmask(u, &mut guards),
        Body::RoundResult(r) => {
            p.on_result(&r);
            Ok(())
        }
        Body::RoundAbort(a) => {
            p.on_abort(&a);
            Ok(())
        }
        Body::RoundStart(_) | Body::Welcome(_) | Body::Offer(_) | Body::Finished(_) => Ok(()),
    };
    while p.poll().is_some() {}
}

/// The job a fuzzed `RoundStart` is checked against.
fn fuzz_spec() -> &'static JobSpec {
    static SPEC: OnceLock<JobSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        JobSpec::from_toml(
            "[job]\nname = \"fuzz\"\npurpose = \"p\"\nrounds = 3\n\
             [label]\ncolumn = \"y\"\npositive = \"yes\"\n\
             [features]\nnumeric = [\"age\", \"balance\"]\n[model]\nkind = \"logistic\"\n",
        )
        .unwrap_or_else(|e| panic!("fuzz spec: {e}"))
    })
}

/// Largest cohort a fuzzed `RoundStart` is checked with (graph building is quadratic in it).
const MAX_FUZZ_COHORT: usize = 64;

/// Decodes a `ServerMessage` and feeds it to the client-side core state `p0`'s node feeds
/// it to: `Offer` → `JobSpec::from_toml` on the offered spec; `RoundStart` → the partner's
/// `RoundShape::check` and `RoundGuard::admit` (against a fixed job), then the round's
/// `RoundParams::new` and `ClientRound::new` for `p0`; `Keys` →
/// `KeyAdvertisement::from_slices` + `ClientRound::on_keys`; `Shares` → `Envelope::new` +
/// `on_shares`; `Unmask` → `on_unmask` (each on `p0` rebuilt at the matching phase).
/// Every message also goes to the partner's production round logic, a `Participant` for
/// `p0` that accepted the fuzz job ([`participant_takes`]). Model chunks have their own
/// target, [`model_chunk`].
pub fn server_message(data: &[u8]) {
    let Ok(msg) = ServerMessage::decode(data) else {
        return;
    };
    let Some(body) = msg.body else {
        return;
    };
    let fx = Fixture::get();
    participant_takes(&body, fx);
    match body {
        server_message::Body::Offer(offer) => {
            let _ = JobSpec::from_toml(&offer.spec_toml);
        }
        server_message::Body::RoundStart(start) => {
            let Some(rref) = start.round.as_ref() else {
                return;
            };
            if start.cohort.len() > MAX_FUZZ_COHORT {
                return;
            }
            // The partner's production checks: the round's shape against its own derivation,
            // and its round guard.
            let Ok(kind) = start.round_kind() else {
                return;
            };
            let spec = fuzz_spec();
            if let Ok(shape) = RoundShape::derive(spec, kind, start.cohort.clone(), 3) {
                let announced = start.announced();
                if shape
                    .check(&announced, &rref.job_id, rref.round, rref.attempt)
                    .is_ok()
                {
                    assert_eq!(
                        start.vector_len,
                        shape.layout.len() as u64,
                        "round start: a checked shape announced another vector length"
                    );
                }
            }
            let mut guard = RoundGuard::new(spec);
            if guard.admit(rref.round, rref.attempt, kind).is_ok() {
                assert!(
                    guard.admit(rref.round, rref.attempt, kind).is_err(),
                    "round start: the guard admitted one round instance twice"
                );
            }
            let rid = RoundId::from(rref);
            let degree = start.graph_degree as usize;
            let len = usize::try_from(start.vector_len).unwrap_or(usize::MAX);
            let threshold = start.threshold as usize;
            if let Ok(params) = RoundParams::new(rid, start.cohort.clone(), threshold, degree, len)
                && params.graph_spec().seed.as_slice() == start.graph_seed.as_slice()
            {
                let mut rng = client_rng(0);
                let _ = ClientRound::new(params, "p0", &fx.identities[0], POLICY, &mut rng);
            }
        }
        server_message::Body::Keys(kb) => {
            let signed: Vec<SignedKeys> = kb
                .keys
                .into_iter()
                .filter_map(|k| SignedKeys::try_from(k).ok())
                .collect();
            let mut client = fx.p0_at(0);
            let mut rng = client_rng(0);
            let _ = client.on_keys(&signed, &fx.roster, &mut rng);
        }
        server_message::Body::Shares(delivery) => {
            let Ok(envelopes) = convert::all::<_, Envelope>(delivery.envelopes) else {
                return;
            };
            let mut client = fx.p0_at(1);
            if client.on_shares(&envelopes).is_ok() {
                let mut y = input_of(0);
                let _ = client.mask(&mut y);
            }
        }
        server_message::Body::SurvivorCheck(check) => {
            let mut client = fx.p0_at(2);
            if client
                .on_survivors(&check.survivors, &fx.identities[0])
                .is_ok()
            {
                assert!(
                    client
                        .on_survivors(&check.survivors, &fx.identities[0])
                        .is_err(),
                    "survivor check: a client signed a second survivor set"
                );
            }
        }
        server_message::Body::Unmask(request) => {
            let Ok(signatures) = convert::all::<_, SurvivorSignature>(request.signatures) else {
                return;
            };
            let mut client = fx.p0_at(3);
            if client.on_unmask(&signatures, &fx.roster).is_ok() {
                assert!(
                    client.on_unmask(&signatures, &fx.roster).is_err(),
                    "unmask: a client answered a second unmask request"
                );
            }
        }
        server_message::Body::Welcome(_)
        | server_message::Body::RoundResult(_)
        | server_message::Body::RoundAbort(_)
        | server_message::Body::Finished(_) => {}
    }
}

/// Encoded `ClientMessage`s of each kind, as `p0` sends them in the fixture round (plus a
/// hello and both offer replies): the seed corpus of [`client_message`].
pub fn client_message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use client_message::Body;
    let fx = Fixture::get();
    let rref = Some(fixture_rref());
    let msgs = [
        (
            "hello",
            Body::Hello(fedmark_proto::Hello {
                partner_id: "p0".into(),
                protocol_version: fedmark_proto::PROTOCOL_VERSION,
            }),
        ),
        (
            "offer_accept",
            Body::OfferReply(fedmark_proto::OfferReply {
                job_id: "fuzz-job".into(),
                accept: true,
                reason: String::new(),
            }),
        ),
        (
            "offer_refuse",
            Body::OfferReply(fedmark_proto::OfferReply {
                job_id: "fuzz-job".into(),
                accept: false,
                reason: "the job's privacy budget epsilon = 8 exceeds this partner's cap of 1"
                    .into(),
            }),
        ),
        ("keys", Body::Keys(proto_keys(&fx.p0_keys))),
        (
            "shares",
            Body::Shares(fedmark_proto::EncryptedShares {
                round: rref.clone(),
                envelopes: proto_envelopes(&fx.p0_envelopes),
            }),
        ),
        (
            "survivor_signature",
            Body::SurvivorSignature(fedmark_proto::SurvivorSignature {
                round: rref.clone(),
                signature: fx.signatures[0].signature.to_vec(),
            }),
        ),
        (
            "unmask",
            Body::Unmask(fedmark_proto::UnmaskReply {
                round: rref,
                shares: fx.p0_reveals.iter().cloned().map(Into::into).collect(),
            }),
        ),
    ];
    msgs.into_iter()
        .map(|(name, body)| (name, ClientMessage { body: Some(body) }.encode_to_vec()))
        .collect()
}

/// Encoded `ServerMessage`s of each kind, as the coordinator sends them to `p0` in the
/// fixture round: the seed corpus of [`server_message`]. `offer_spec` is the TOML of the
/// offered job.
pub fn server_message_seeds(offer_spec: &str) -> Vec<(&'static str, Vec<u8>)> {
    use server_message::Body;
    let fx = Fixture::get();
    let rref = Some(fixture_rref());
    let graph = fx.params.graph_spec();
    let msgs = [
        (
            "welcome",
            Body::Welcome(fedmark_proto::Welcome {
                coordinator_id: "coordinator".into(),
                session_token: vec![0x5a; 32],
            }),
        ),
        (
            "offer",
            Body::Offer(fedmark_proto::JobOffer {
                job_id: "fuzz-job".into(),
                spec_toml: offer_spec.to_owned(),
            }),
        ),
        (
            "round_start",
            Body::RoundStart(fedmark_proto::RoundStart {
                round: rref.clone(),
                kind: fedmark_proto::RoundKind::Training as i32,
                cohort: fx.params.cohort().to_vec(),
                threshold: 2,
                secure: true,
                vector_len: VECTOR_LEN as u64,
                feature_mean: vec![40.0, 1000.0],
                feature_std: vec![10.0, 3000.0],
                model_len: 2,
                graph_seed: graph.seed.to_vec(),
                graph_degree: graph.degree as u32,
                clip: 0.0,
            }),
        ),
        (
            "keys",
            Body::Keys(fedmark_proto::KeyBroadcast {
                round: rref.clone(),
                keys: fx.keys_for_p0.iter().cloned().map(Into::into).collect(),
            }),
        ),
        (
            "shares",
            Body::Shares(fedmark_proto::SharesDelivery {
                round: rref.clone(),
                envelopes: proto_envelopes(&fx.envelopes_for_p0),
            }),
        ),
        (
            "unmask",
            Body::Unmask(fedmark_proto::UnmaskRequest {
                round: rref.clone(),
                survivors: fx.survivors.clone(),
                signatures: fx
                    .signatures
                    .iter()
                    .map(|s| fedmark_proto::PartnerSignature {
                        partner_id: s.partner_id.clone(),
                        signature: s.signature.to_vec(),
                    })
                    .collect(),
            }),
        ),
        (
            "survivor_check",
            Body::SurvivorCheck(fedmark_proto::SurvivorCheck {
                round: rref.clone(),
                survivors: fx.survivors.clone(),
            }),
        ),
        (
            "round_result",
            Body::RoundResult(fedmark_proto::RoundResult {
                round: rref.clone(),
                participants: 3,
                auc: 0.75,
                log_loss: 0.4,
                accuracy: 0.88,
            }),
        ),
        (
            "round_abort",
            Body::RoundAbort(fedmark_proto::RoundAbort {
                round: rref,
                reason: "quorum lost in phase shares".into(),
            }),
        ),
        (
            "finished",
            Body::Finished(fedmark_proto::JobFinished {
                job_id: "fuzz-job".into(),
                reason: "all rounds done".into(),
            }),
        ),
    ];
    msgs.into_iter()
        .map(|(name, body)| (name, ServerMessage { body: Some(body) }.encode_to_vec()))
        .collect()
}

/// Decodes an `InputChunk` (what an upload stream carries) and adds it, as the coordinator's
/// input phase does, to a `RunningSum` of the fixture round's vector length with a fresh
/// `Progress`: an accepted chunk never runs past the vector.
pub fn input_chunk(data: &[u8]) {
    let Ok(chunk) = fedmark_proto::InputChunk::decode(data) else {
        return;
    };
    let fx = Fixture::get();
    let mut sum = RunningSum::new(fx.params.vector_len());
    let mut progress = Progress::default();
    let offset = usize::try_from(chunk.offset).unwrap_or(usize::MAX);
    if sum
        .add(&mut progress, offset, &chunk.values, chunk.last)
        .is_ok()
    {
        assert!(
            progress.received <= fx.params.vector_len(),
            "input: progress past the vector's end"
        );
    }
}

/// Model length the [`model_chunk`] target assembles.
const FUZZ_MODEL_LEN: usize = 4;

/// Decodes a `ModelChunk` (what a model download carries) and pushes it, as the client does,
/// into a `ModelAssembly` of the fixture round for a 4-parameter model, first on its own and
/// then after the fixture's first half: an accepted chunk never grows the model past its
/// length, and a chunk that completes it leaves exactly that length.
pub fn model_chunk(data: &[u8]) {
    use fedmark_client::transfer::ModelAssembly;
    let Ok(chunk) = fedmark_proto::ModelChunk::decode(data) else {
        return;
    };
    let first_half = fedmark_proto::ModelChunk {
        round: Some(fixture_rref()),
        offset: 0,
        values: [0.5f64, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        last: false,
    };
    for prefix in [None, Some(&first_half)] {
        let mut model = ModelAssembly::new(fixture_rref(), FUZZ_MODEL_LEN);
        if let Some(p) = prefix
            && !matches!(model.push(p), Ok(false))
        {
            panic!("model: the fixture's first half was not accepted");
        }
        if let Ok(done) = model.push(&chunk) {
            let values = model.into_values();
            assert!(
                values.len() <= FUZZ_MODEL_LEN,
                "model: grew past its length"
            );
            assert!(
                !done || values.len() == FUZZ_MODEL_LEN,
                "model: completed at the wrong length"
            );
        }
    }
}

/// The job schema a [`round_state`] input is read against: one numeric column with a range
/// and one categorical column of three values (four slots).
fn round_state_schema() -> fedmark_core::features::FeatureSchema {
    use fedmark_core::features::{Categorical, FeatureSchema};
    FeatureSchema {
        numeric: vec!["a".into()],
        categorical: vec![(
            "c".into(),
            Categorical::Vocabulary(vec!["u".into(), "v".into(), "w".into()]),
        )],
        ranges: vec![Some([0.0, 1.0])],
    }
}

/// The words a [`round_state`] input stands for: a byte below 0xF0 is that small integer, and
/// 0xF0 followed by eight bytes is the little-endian f64 they hold (so most mutations keep
/// the counts, tags and indices the layout is made of).
pub fn round_state_words(data: &[u8]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0xF0 && i + 8 < data.len() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i + 1..i + 9]);
            out.push(f64::from_le_bytes(b));
            i += 9;
        } else {
            out.push(f64::from(data[i]));
            i += 1;
        }
    }
    out
}

/// The bytes of [`round_state_words`] for `words` (the seeds' encoding).
pub fn round_state_bytes(words: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &w in words {
        if w.fract() == 0.0 && (0.0..240.0).contains(&w) {
            out.push(w as u8);
        } else {
            out.push(0xF0);
            out.extend(w.to_le_bytes());
        }
    }
    out
}

/// Reads a boosted-trees round state (what a partner downloads as a gbdt round's model)
/// against a fixed schema: never a panic, and an accepted state re-encodes to words that read
/// back as the same state.
pub fn round_state(data: &[u8]) {
    use fedmark_core::gbdt::RoundState;
    let schema = round_state_schema();
    let words = round_state_words(data);
    if let Ok(state) = RoundState::from_words(&words, &schema) {
        let again = RoundState::from_words(&state.to_words(), &schema);
        assert_eq!(again.as_ref(), Ok(&state), "round state: no round trip");
    }
}

/// Seeds of [`round_state`]: the first round's state (no tree, the root asked for) and a
/// state with a trained tree and a split root whose children are asked for.
pub fn round_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use fedmark_core::gbdt::{
        BinnedRows, Feature, GbdtParams, PartialNode, PartialTree, RoundState, SplitRule, train,
    };
    let schema = round_state_schema();
    let Ok(features) = Feature::from_ranges(&schema, 8) else {
        return Vec::new();
    };
    let mut rows = fedmark_core::features::RawRows::new(&schema);
    for i in 0..64u32 {
        let a = f64::from(i % 8) / 8.0;
        rows.push(&[a], &[i % 4], a > 0.4 || i % 4 == 2);
    }
    let trained = BinnedRows::from_raw(&rows, &features).ok().and_then(|b| {
        let params = GbdtParams {
            trees: 1,
            max_depth: 2,
            min_child_weight: 0.1,
            ..Default::default()
        };
        train(&params, &features, &b, None).ok().map(|(m, _)| m)
    });
    let Some(model) = trained else {
        return Vec::new();
    };
    let Ok(empty) = fedmark_core::gbdt::GbdtModel::from_parts(features.clone(), 0.1, Vec::new())
    else {
        return Vec::new();
    };
    let first = RoundState {
        model: empty,
        tree: PartialTree::root(),
        build: vec![0],
    };
    let split = PartialTree::from_nodes(
        vec![
            PartialNode::Split {
                feature: 0,
                rule: SplitRule::Numeric {
                    bin: 3,
                    threshold: 0.5,
                },
                left: 1,
                right: 2,
            },
            PartialNode::Open,
            PartialNode::Open,
        ],
        &features,
    );
    let mut out = vec![("first_round", round_state_bytes(&first.to_words()))];
    if let Ok(tree) = split {
        let second = RoundState {
            model,
            tree,
            build: vec![1, 2],
        };
        out.push(("second_level", round_state_bytes(&second.to_words())));
    }
    out
}

/// Seeds of [`input_chunk`]: `p0`'s whole vector of the fixture round and its first half.
pub fn input_chunk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fx = Fixture::get();
    let rref = Some(fixture_rref());
    let whole = fedmark_proto::InputChunk {
        round: rref.clone(),
        offset: 0,
        values: fx.p0_input.clone(),
        last: true,
        consent_snapshot: fedmark_core::audit::sha256_hex(b"consent"),
    };
    let half = fedmark_proto::InputChunk {
        round: rref,
        offset: 0,
        values: fx.p0_input[..VECTOR_LEN / 2].to_vec(),
        last: false,
        consent_snapshot: String::new(),
    };
    vec![
        ("input_whole", whole.encode_to_vec()),
        ("input_first_half", half.encode_to_vec()),
    ]
}

/// Seeds of [`model_chunk`]: a whole 4-parameter model and the second half of one.
pub fn model_chunk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let chunk = |offset: u64, values: &[f64]| fedmark_proto::ModelChunk {
        round: Some(fixture_rref()),
        offset,
        values: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        last: true,
    };
    vec![
        (
            "model_whole",
            chunk(0, &[0.5, -0.25, 1.0, 2.0]).encode_to_vec(),
        ),
        ("model_second_half", chunk(2, &[1.0, 2.0]).encode_to_vec()),
    ]
}

/// A small valid audit log of `records` records (the seed corpus of [`audit_log`]).
pub fn audit_log_seed(records: usize) -> String {
    let mut chain = AuditChain::new("coordinator");
    let mut text = String::new();
    for i in 0..records {
        let data = match i {
            0 => {
                json!({"job": "fuzz-job", "spec_sha256": fedmark_core::audit::sha256_hex(b"spec")})
            }
            1 => json!({"job": "fuzz-job", "partner": "p1", "reason": "cap \"1\" < ε 8"}),
            _ => json!({"job": "fuzz-job", "round": i, "participants": 3, "epsilon": 0.125}),
        };
        let kind = match i {
            0 => "job_submitted",
            1 => "offer_refused",
            _ => "round_committed",
        };
        if let Ok(r) = chain.append(1_700_000_000_000 + i as u64, kind, data) {
            text.push_str(&r.to_line());
            text.push('\n');
        }
    }
    text
}

/// The admin API's decoders and handlers, as an operator's client reaches them past the
/// credential check: byte 0 picks the call (submit, cancel, export model, export audit,
/// list), the rest is that call's prost-encoded request, handled by the real
/// [`AdminService`](fedmark_coordinator::admin::AdminService) over a fresh in-memory store.
/// Properties: nothing panics; the store (in memory, no I/O to fail) never answers
/// `Internal`; a submitted spec is listed under a well-formed job id; an export stream ends.
pub fn admin_request(data: &[u8]) {
    let _ = admin_outcome(data);
}

/// [`admin_request`]'s call and its outcome: `None` when the bytes decode to no request,
/// else the status code the handler answered (`Ok` for success).
pub fn admin_outcome(data: &[u8]) -> Option<tonic::Code> {
    use fedmark_coordinator::admin::{AdminAuth, AdminService};
    use fedmark_coordinator::board::Board;
    use fedmark_coordinator::queue::JobQueue;
    use fedmark_coordinator::store::Store;
    use fedmark_coordinator::token::AdminToken;
    use fedmark_proto::admin_server::Admin;
    use fedmark_proto::{ExportModelRequest, JobRequest, ListJobsRequest, SubmitJobRequest};
    use tokio_stream::StreamExt;

    let (&call, body) = data.split_first()?;
    let store = Store::in_memory().unwrap_or_else(|e| panic!("fixture: in-memory store: {e}"));
    let auth = AdminAuth {
        token: AdminToken::from_secret("fuzz"),
        require_admin_cert: false,
    };
    let service = AdminService::new(
        store,
        Board::default(),
        std::sync::Arc::new(JobQueue::default()),
        auth,
    );
    fn authorised<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(v) = "Bearer fuzz".parse() {
            request.metadata_mut().insert("authorization", v);
        }
        request
    }
    fn no_internal<T>(what: &str, r: &Result<T, tonic::Status>) -> tonic::Code {
        match r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => {
                assert_ne!(s.code(), tonic::Code::Internal, "{what}: {}", s.message());
                s.code()
            }
        }
    }
    /// An export's answer, its stream read to the end (no chunk may be `Internal` either).
    async fn drained<S>(what: &str, r: Result<tonic::Response<S>, tonic::Status>) -> tonic::Code
    where
        S: tokio_stream::Stream<Item = Result<fedmark_proto::FileChunk, tonic::Status>> + Unpin,
    {
        let code = no_internal(what, &r);
        if let Ok(stream) = r {
            let mut stream = stream.into_inner();
            while let Some(chunk) = stream.next().await {
                no_internal(what, &chunk);
            }
        }
        code
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("fixture: runtime: {e}"));
    runtime.block_on(async move {
        match call % 5 {
            0 => {
                let req = SubmitJobRequest::decode(body).ok()?;
                let r = service.submit_job(authorised(req)).await;
                let code = no_internal("submit", &r);
                if let Ok(info) = r {
                    let id = info.into_inner().job_id;
                    assert!(
                        id.len() == 16
                            && id.starts_with("job-")
                            && id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
                        "submit returned a malformed job id {id:?}"
                    );
                    let listed = service
                        .list_jobs(authorised(ListJobsRequest {}))
                        .await
                        .unwrap_or_else(|s| panic!("list after submit: {s}"));
                    assert!(
                        listed.into_inner().jobs.iter().any(|j| j.job_id == id),
                        "a submitted job is not listed"
                    );
                }
                Some(code)
            }
            1 => {
                let req = JobRequest::decode(body).ok()?;
                Some(no_internal(
                    "cancel",
                    &service.cancel_job(authorised(req)).await,
                ))
            }
            2 => {
                let req = ExportModelRequest::decode(body).ok()?;
                let r = service.export_model(authorised(req)).await;
                Some(drained("export model", r).await)
            }
            3 => {
                let req = JobRequest::decode(body).ok()?;
                let r = service.export_audit(authorised(req)).await;
                Some(drained("export audit", r).await)
            }
            _ => {
                let req = ListJobsRequest::decode(body).ok()?;
                Some(no_internal(
                    "list",
                    &service.list_jobs(authorised(req)).await,
                ))
            }
        }
    })
}

/// The operators' HTTP listener on raw bytes: byte 0 picks who is calling (plain HTTP, or TLS
/// without a certificate, with a partner's, with an administrator's), the rest is what the
/// client sends, fed over an in-memory stream to the listener's own per-connection exchange
/// (hyper's strict HTTP/1.1 parser, the header-read timeout, the routing and the dashboard),
/// with the dashboard served and its admin token `fuzz-token`. The client's side is closed
/// after the bytes, so nothing waits for a timeout. Properties: nothing panics; an answer is
/// an HTTP/1.x status line (hyper answers an HTTP/1.0 request in HTTP/1.0: the fuzzer's first
/// find, kept as `corpus/http_request/http10_pri.bin`, against a property that said 1.1); the
/// dashboard's data (`audit_head`) is only ever answered to a request that carried the token,
/// and over TLS only to an administrator's certificate; over TLS without one, no dashboard
/// path answers 200.
pub fn http_request(data: &[u8]) {
    use fedmark_coordinator::http::FuzzCaller;
    let Some((caller, answer)) = http_answer(data) else {
        return;
    };
    if answer.is_empty() {
        return;
    }
    let raw = &data[1..];
    let text = String::from_utf8_lossy(&answer);
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()));
    let Some(status) = status else {
        panic!(
            "an answer that is not an HTTP/1.x status line: {:?}",
            &text[..text.len().min(80)]
        );
    };
    if text.contains("\"audit_head\"") {
        let sent = String::from_utf8_lossy(raw);
        assert!(
            sent.contains("fuzz-token"),
            "the dashboard's data was answered without the token"
        );
        assert!(
            matches!(caller, FuzzCaller::Plain | FuzzCaller::TlsAdmin),
            "the dashboard's data was answered over TLS to {caller:?}"
        );
    }
    if matches!(caller, FuzzCaller::TlsAnonymous | FuzzCaller::TlsPartner) {
        assert!(
            !(status == "200" && text.contains("content-security-policy")),
            "a dashboard page was served over TLS to {caller:?}"
        );
    }
}

/// [`http_request`]'s exchange: who called, and the bytes the listener answered (`None` for
/// an empty input).
pub fn http_answer(data: &[u8]) -> Option<(fedmark_coordinator::http::FuzzCaller, Vec<u8>)> {
    use fedmark_coordinator::board::Board;
    use fedmark_coordinator::dashboard::Dashboard;
    use fedmark_coordinator::http::{FuzzCaller, exchange_for_fuzzing};
    use fedmark_coordinator::metrics::Metrics;
    use fedmark_coordinator::store::Store;
    use fedmark_coordinator::token::AdminToken;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (&who, raw) = data.split_first()?;
    let caller = match who % 4 {
        0 => FuzzCaller::Plain,
        1 => FuzzCaller::TlsAnonymous,
        2 => FuzzCaller::TlsPartner,
        _ => FuzzCaller::TlsAdmin,
    };
    let store = Store::in_memory().unwrap_or_else(|e| panic!("fixture: in-memory store: {e}"));
    let dashboard = Dashboard {
        board: Board::default(),
        store,
        token: AdminToken::from_secret("fuzz-token"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("fixture: runtime: {e}"));
    let answer = runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(exchange_for_fuzzing(
            server,
            caller,
            Metrics::default(),
            Some(dashboard),
        ));
        // The server may stop reading (a refused head): a failed write is an answer too.
        let _ = client.write_all(raw).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let _ = served.await;
        answer
    });
    Some((caller, answer))
}

/// Seeds of [`http_request`]: the listener's own paths, from each kind of caller.
pub fn http_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let get = |who: u8, path: &str, auth: Option<&str>| {
        let mut v = vec![who];
        v.extend_from_slice(format!("GET {path} HTTP/1.1\r\nhost: x\r\n").as_bytes());
        if let Some(a) = auth {
            v.extend_from_slice(format!("authorization: Bearer {a}\r\n").as_bytes());
        }
        v.extend_from_slice(b"\r\n");
        v
    };
    vec![
        ("healthz", get(0, "/healthz", None)),
        ("metrics_tls", get(1, "/metrics", None)),
        ("api_plain", get(0, "/api/jobs", Some("fuzz-token"))),
        ("api_partner", get(2, "/api/jobs", Some("fuzz-token"))),
        ("api_admin", get(3, "/api/jobs", Some("fuzz-token"))),
        ("page_admin", get(3, "/dashboard", None)),
        ("post", {
            let mut v = vec![0];
            v.extend_from_slice(b"POST /metrics HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");
            v
        }),
    ]
}

/// Seeds of [`admin_request`]: one valid request of each call.
pub fn admin_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use fedmark_proto::{ExportModelRequest, JobRequest, ListJobsRequest, SubmitJobRequest};
    let with = |call: u8, body: Vec<u8>| {
        let mut v = vec![call];
        v.extend(body);
        v
    };
    let spec = "[job]\nname = \"fuzz\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
                [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n";
    let job = JobRequest {
        job_id: "job-0123456789ab".into(),
    };
    vec![
        (
            "submit",
            with(
                0,
                SubmitJobRequest {
                    spec_toml: spec.into(),
                }
                .encode_to_vec(),
            ),
        ),
        ("cancel", with(1, job.encode_to_vec())),
        (
            "export_model",
            with(
                2,
                ExportModelRequest {
                    job_id: "job-0123456789ab".into(),
                    round: Some(1),
                }
                .encode_to_vec(),
            ),
        ),
        ("export_audit", with(3, job.encode_to_vec())),
        ("list", with(4, ListJobsRequest {}.encode_to_vec())),
    ]
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("roster", roster),
    ("coordinator_config", coordinator_config),
    ("client_config", client_config),
    ("csv_rows", csv_rows),
    ("audit_log", audit_log),
    ("client_message", client_message),
    ("server_message", server_message),
    ("input_chunk", input_chunk),
    ("model_chunk", model_chunk),
    ("admin_request", admin_request),
    ("http_request", http_request),
    ("round_state", round_state),
];
