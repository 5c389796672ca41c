#!/usr/bin/env python3
"""Reference ε for fedmark's PLD accountant (core/src/pld.rs), from Google's dp-accounting.

For every setting of a grid over the Poisson-subsampled Gaussian mechanism (add/remove-one
adjacency) this writes, to stdout as CSV:

- epsilon_pld: dp-accounting's connect-the-dots PLD, pessimistic estimate, at the
  discretisation interval in column `discretisation`: an upper bound on the true ε, and the
  reference the Rust tests hold fedmark to (never more than 0.1 % below, never more than
  1 % above). The interval is 1e-4, or 1/30 of the standard deviation of one step's privacy
  loss when that is smaller: at a fixed 1e-4, settings with small q and small ε come out
  several times too large (the grid adds up to h²/4 of variance per step, e.g. q = 1e-4,
  sigma = 10, T = 1e5, delta = 1e-3 gives 0.0075 where the true ε is below 0.002);
- epsilon_pld_optimistic: dp-accounting's optimistic estimate at the same interval (it
  falls back to privacy buckets), a value at or below the true ε (fedmark must not report
  less);
- epsilon_rdp: dp-accounting's RDP accountant (its default orders), for comparison.

The grid: q in {1e-4, 1e-3, 1e-2, 0.05, 0.2, 1}, sigma in {0.5, 0.8, 1, 2, 5, 10}, T in
{1, 10, 1e3, 1e5}, delta cycling through {1e-8, ..., 1e-3}; settings whose RDP ε
exceeds 50 (meaningless as a guarantee, and too wide for a 1e-4 grid) are skipped.

Usage: python3 core/testdata/pld_reference.py > core/testdata/pld_reference.csv
(needs `pip install dp-accounting`; the CSV checked in was made with the version it names).
With arguments `q,sigma,steps,delta ...` it computes just those settings, in the same
format (the live test in core/tests/pld_reference.rs does this).
"""

import itertools
import logging
import math
import sys

from importlib.metadata import version

import dp_accounting  # noqa: F401  (the package whose version is recorded)
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld
from dp_accounting.rdp import rdp_privacy_accountant as rdp
import numpy as np
from scipy import integrate, stats

# dp-accounting warns on every optimistic estimate that it uses privacy buckets.
logging.getLogger().setLevel(logging.ERROR)

MAX_DISCRETISATION = 1e-4
MAX_EPSILON = 50.0
QS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 1.0]
SIGMAS = [0.5, 0.8, 1.0, 2.0, 5.0, 10.0]
STEPS = [1, 10, 1000, 100_000]
DELTAS = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]


def step_loss_std(q, sigma):
    """Standard deviation of one step's privacy loss, the larger of the two directions."""

    def moments(weights, sign):
        # loss sign*ln(1 - q + q e^{(2x-1)/(2 sigma^2)}) with x ~ sum_m w_m N(m, sigma^2)
        def loss(x):
            t = (2 * x - 1) / (2 * sigma**2)
            return sign * (np.log1p(q * np.expm1(t)) if t <= 0 else t + np.log(q + (1 - q) * np.exp(-t)))

        m1 = m2 = 0.0
        for mean, w in zip((0.0, 1.0), weights):
            if w == 0:
                continue
            pdf = stats.norm(mean, sigma).pdf
            lo, hi = mean - 12 * sigma, mean + 12 * sigma
            m1 += w * integrate.quad(lambda x: loss(x) * pdf(x), lo, hi, limit=200, points=[0.5])[0]
            m2 += w * integrate.quad(lambda x: loss(x) ** 2 * pdf(x), lo, hi, limit=200, points=[0.5])[0]
        return math.sqrt(max(m2 - m1 * m1, 0.0))

    remove = moments((1 - q, q), 1.0)
    add = moments((1.0, 0.0), -1.0)
    return max(remove, add)


def discretisation(q, sigma):
    return min(MAX_DISCRETISATION, float(f"{step_loss_std(q, sigma) / 30:.1e}"))


def pld_epsilon(q, sigma, steps, delta, pessimistic, interval):
    dist = pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivity=1.0,
        pessimistic_estimate=pessimistic,
        value_discretization_interval=interval,
        sampling_prob=q,
        use_connect_dots=True,
    )
    if steps > 1:
        dist = dist.self_compose(steps)
    return dist.get_epsilon_for_delta(delta)


def rdp_epsilon(q, sigma, steps, delta):
    acc = rdp.RdpAccountant()
    event = dp_event.GaussianDpEvent(sigma)
    if q < 1.0:
        event = dp_event.PoissonSampledDpEvent(q, event)
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


def settings():
    if len(sys.argv) > 1:
        for arg in sys.argv[1:]:
            q, sigma, steps, delta = arg.split(",")
            yield float(q), float(sigma), int(steps), float(delta)
        return
    for k, (q, sigma, steps) in enumerate(itertools.product(QS, SIGMAS, STEPS)):
        yield q, sigma, steps, DELTAS[k % len(DELTAS)]


def main():
    out = sys.stdout
    out.write(f"# dp-accounting {version('dp-accounting')}; see pld_reference.py\n")
    out.write(
        "mechanism,noise_multiplier,sampling_rate,steps,delta,discretisation,"
        "epsilon_pld,epsilon_pld_optimistic,epsilon_rdp\n"
    )
    for k, (q, sigma, steps, delta) in enumerate(settings()):
        eps_rdp = rdp_epsilon(q, sigma, steps, delta)
        if eps_rdp > MAX_EPSILON:
            continue
        interval = discretisation(q, sigma)
        eps_pess = pld_epsilon(q, sigma, steps, delta, True, interval)
        eps_opt = pld_epsilon(q, sigma, steps, delta, False, interval)
        out.write(
            f"poisson_subsampled_gaussian,{sigma!r},{q!r},{steps},{delta!r},"
            f"{interval!r},{eps_pess:.10g},{eps_opt:.10g},{eps_rdp:.10g}\n"
        )
        out.flush()
        print(f"{k}: q={q} sigma={sigma} T={steps} delta={delta}: {eps_pess:.6g}", file=sys.stderr)


if __name__ == "__main__":
    main()
