from runner.db.monitor import sample_interval


def test_a_short_lock_timeout_is_sampled_several_times_per_wait():
    assert sample_interval(0.2) == 0.2 / 5


def test_sampling_is_at_most_ten_per_second_and_at_least_fifty():
    assert sample_interval(2.0) == 0.1
    assert sample_interval(0) == 0.1  # no lock_timeout: waits are long, 0.1 s is plenty
    assert sample_interval(0.01) == 0.02
