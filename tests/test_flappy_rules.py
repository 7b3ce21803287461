"""The shared rules: constants of the original game, config validation, the gap generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.flappy_bird.rules import (
    BIRD_START_Y,
    BIRD_X,
    FIRST_PIPE_X,
    GAP_TOP_MIN,
    GROUND_Y,
    PIPE_SPAWN_X,
    SCORE_X,
    SECOND_PIPE_X,
    SHIFT_X,
    FlappyConfig,
    gap_offset,
    gap_table,
    hash32,
    hash32_torch,
    seed_key,
)


def test_constants_match_flappybird():
    # FlapPyBird: SCREENWIDTH 288, SCREENHEIGHT 512, BASEY = 512 * 0.79, playerx = int(288 * 0.2)
    assert GROUND_Y == int(512 * 0.79) == 404
    assert BIRD_X == int(288 * 0.2) == 57
    assert BIRD_START_Y == int((512 - 24) / 2) == 244
    assert (FIRST_PIPE_X, SECOND_PIPE_X, PIPE_SPAWN_X) == (488, 632, 298)
    assert GAP_TOP_MIN == int(404.48 * 0.2) == 80
    assert FlappyConfig().gap_top_span == int(404.48 * 0.6 - 100) == 142
    assert SHIFT_X == 5  # `0 < upperPipes[0]['x'] < 5`
    assert SCORE_X == 48  # pipeMidPos <= playerMidPos: x + 26 <= 57 + 17


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pipe_gap", 0),
        ("pipe_gap", -10),
        ("pipe_gap", 242),
        ("pipe_speed", 0),
        ("pipe_speed", -4),
        ("pipe_speed", 2.5),
        ("gravity", -1),
        ("flap_speed", 3),
        ("max_fall_speed", 0),
        ("ceiling", "bounce"),
        ("reward_alive", float("nan")),
        ("max_score", 0),
        ("gap_table_size", 1000),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FlappyConfig(**{field: value})


def test_feature_scale_maps_bounds_into_unit_interval():
    cfg = FlappyConfig()
    for raw in (cfg.feature_low, cfg.feature_high):
        obs = (raw - cfg.feature_mid) * cfg.feature_scale  # float32 arithmetic
        assert obs.dtype == np.float32
        assert np.all(np.abs(obs) <= 1.0)
        assert np.all(np.abs(obs) > 0.9999)


def test_rewards_are_float32_values():
    alive, alive_and_pipe, crash = FlappyConfig().rewards
    assert alive == float(np.float32(0.1))
    assert alive_and_pipe == float(np.float32(1.1))
    assert crash == -1.0


def test_hash_is_the_same_in_python_and_torch():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    expected = [hash32(v) for v in values]
    assert hash32_torch(torch.tensor(values)).tolist() == expected
    assert len(set(expected)) == len(values)  # a bijection: no collisions


def test_gap_table_matches_python_draws():
    cfg = FlappyConfig(gap_table_size=64)
    seeds = [0, 1, 7, 2**40 + 3]
    keys = torch.tensor([seed_key(s) for s in seeds])
    table = gap_table(keys, cfg, chunk_rows=3)
    assert table.dtype == torch.uint8 and table.shape == (4, 64)
    for row, seed in enumerate(seeds):
        # the stream repeats every gap_table_size draws
        expected = [gap_offset(seed_key(seed), k, cfg) for k in range(64, 128)]
        assert table[row].tolist() == expected


def test_gap_heights_are_uniform():
    cfg = FlappyConfig()
    keys = torch.tensor([seed_key(s) for s in range(64)])
    counts = torch.bincount(gap_table(keys, cfg).flatten().long(), minlength=cfg.gap_top_span)
    assert counts.numel() == cfg.gap_top_span  # every offset in [0, 142), nothing above
    expected = counts.sum().item() / cfg.gap_top_span
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 141 + 5 * (2 * 141) ** 0.5  # 141 degrees of freedom, about 5 sigma


def test_seed_key_rejects_bad_seeds():
    with pytest.raises(ValueError):
        seed_key(-1)
    with pytest.raises(TypeError):
        seed_key(1.5)
    assert seed_key(3) != seed_key(4)
