//! Benchmarks of the PLD accountant ([`fedmark_core::pld`]): one ε(δ) query of a T = 10⁵-step
//! composition of the Poisson-subsampled Gaussian, from the events to the answer (grid
//! sizing, connect-the-dots discretisation of both directions, one FFT composition, the ε
//! scan). The target is under 50 ms on 2 cores.
//!
//! ```text
//! cargo bench -p fedmark-core --bench pld -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! Settings: DP-SGD at q = 0.01, σ = 1 (ε ≈ 6.3 at δ = 1e-5, the common case); q = 0.001,
//! σ = 0.8 (a heavier-tailed loss, a finer grid); the plain Gaussian mechanism q = 1,
//! σ = 100 (one direction only).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fedmark_core::pld::{GaussianEvent, epsilon_for_events};

fn epsilon_at_100k_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("pld_epsilon_t100k");
    for (name, q, sigma) in [
        ("q0.01_sigma1", 0.01, 1.0),
        ("q0.001_sigma0.8", 0.001, 0.8),
        ("q1_sigma100", 1.0, 100.0),
    ] {
        let events = [GaussianEvent {
            sampling_rate: q,
            noise_multiplier: sigma,
            count: 100_000,
        }];
        group.bench_with_input(BenchmarkId::from_parameter(name), &events, |b, events| {
            b.iter(|| epsilon_for_events(events, 1e-5).expect("valid events"));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = epsilon_at_100k_steps
}
criterion_main!(benches);
