"""benchmarks/decision_error.py's simulation, small: under A/A the old rule (best mean above plain
fusion's) deploys most of the time, the new rule (paired t + Holm) rarely; a truly better
candidate is found more often with more repeats; the measured noise reads the committed files."""
import glob

from benchmarks import decision_error as de

NOISE = dict(sd_base=0.02, sd_cand=0.06, rho_bc=0.5, rho_cc=0.5)    # plain fusion varies less


def test_aa_false_deployments_old_rule_most_new_rule_few():
    for repeats in (2, 5):
        r = de.simulate(600, 4, repeats, **NOISE, seed=1)
        assert r["old_false"] > 0.5, r          # K/(K+1) = 0.8 in theory
        assert r["new_false"] < 0.1, r          # alpha = 0.05, plus simulation noise


def test_power_grows_with_repeats_and_the_gain_is_deployed():
    few = de.simulate(600, 4, 3, **NOISE, gains=[0.08, 0, 0, 0], seed=2)
    many = de.simulate(600, 4, 12, **NOISE, gains=[0.08, 0, 0, 0], seed=2)
    assert many["new_power"] > few["new_power"] and many["new_power"] > 0.7, (few, many)


def test_measured_noise_reads_the_committed_comparisons():
    files = sorted(glob.glob(str(de.ROOT / "benchmarks" / "results" / "compare-*.json")))
    noise = de.measured_noise(files)
    assert len(noise["files"]) == len(files) >= 1
    assert 0 < noise["sd_baseline"] < 0.5 and 0 < noise["sd_candidate"] < 0.5
    assert -1 <= noise["rho_baseline_candidate"] <= 1


def test_power_rises_with_the_within_seed_correlation_and_no_impossible_gain_is_written():
    """The same seed sds: a higher plain fusion-MultiFair correlation shrinks the paired
    difference's sd, so the same gain is found more often; a detectable gain above the headroom
    (1 - plain fusion's ES-AUC) is written as none achievable, never as a figure."""
    low = de.simulate(1500, 4, 8, 0.077, 0.064, 0.3, 0.3, gains=[0.05, 0, 0, 0], seed=3)
    high = de.simulate(1500, 4, 8, 0.077, 0.064, 0.95, 0.95, gains=[0.05, 0, 0, 0], seed=3)
    assert high["new_power"] > low["new_power"] + 0.3, (low, high)
    assert de._gain(1.061, 0.30).startswith("none achievable (needs +1.061")
    assert de._gain(0.062, 0.30) == "+0.062"
