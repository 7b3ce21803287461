/*
 * One step of N Flappy Bird games in one call: the CPU step kernel of `BatchedFlappyBird`.
 *
 * The torch step of `batched.py` runs about fifty tensor ops a step, each over all N envs;
 * on a CPU with a thousand envs an op costs about as much to launch as to run. This file does
 * the same step in one call, the rules of `rules.py` in their order (the numbers in the
 * comments are the rules' numbers there):
 *
 *   1. flap or fall       2. rotation        3. move             4. ceiling
 *   5. scroll             6. next pipe passed (shift, spawn)     7. crash
 *   8. score              9. reward          10. episode end
 *
 * then the 12 features of the observation and the SAME_STEP autoreset.
 *
 * It reads and writes the env's own tensors in place (`kernel.py` passes their addresses):
 *
 *   state   float32 (15, N), one row per quantity: rows 0-8 the last, next and next-next
 *           pipes (x, gap top, gap bottom), 9-11 the bird (y, speed, rotation), 12-14 the
 *           episode's score, length and return (the layout of `batched.py`);
 *   draws   int32 or int64 (N,), the draws of each env's gap stream used so far;
 *   table   uint8 (N, gap_table_size), each env's pre-drawn gap offsets;
 *
 * and writes the step's outputs into new tensors: obs and final_obs float32 (N, 12); reward,
 * score (after the autoreset) and the finished episode's score, length and return float32
 * (N,); terminated, truncated and done (= terminated | truncated) bool (N,), one byte each.
 *
 * The envs go by blocks of 64. A block's columns of the state are copied into a small local
 * array, row by row; each rule is a loop over the block's envs, without branches, that the
 * compiler turns into vector instructions (four envs at a time); the two rare events, a pipe
 * shift (rule 6) and an autoreset, go env by env, only for the envs they concern. (Taking
 * each env through all the rules at once is slower: the rows of the state lie N floats apart
 * and compete for the same few lines of the CPU cache, and the random actions make the
 * branches of an env-by-env step unpredictable.)
 *
 * All state values are whole or half numbers, which float32 holds exactly, so every sum and
 * comparison here is exact and the tests of rules 7-8 are written as the single env writes
 * them (the torch step writes them as distances to a centre, with the same results); the
 * only roundings are those of the episode return (a sum of rewards) and of the features'
 * `(raw - mid) * scale`, done as the torch step does them, in float32 and in the same order.
 * Compiled with -ffp-contract=off: no fused multiply-add may change a rounding.
 * tests/test_flappy_kernel.py checks every output and the whole state against the torch step
 * after every step; tests/test_flappy_batched.py checks both steps against the single env.
 */

#include <stdint.h>
#include <string.h>

/* The constants of the classic game, as in rules.py (px, degrees). */
#define SCREEN_W 288
#define GROUND_Y 404
#define BIRD_X 57
#define BIRD_W 34
#define BIRD_H 24
#define BIRD_START_Y 244
#define PIPE_W 52
#define PIPE_SPAWN_X 298             /* SCREEN_W + 10 */
#define FIRST_PIPE_X 488             /* SCREEN_W + 200 */
#define SECOND_PIPE_X 632            /* SCREEN_W + 200 + SCREEN_W / 2 */
#define SHIFT_X 5                    /* BIRD_X - PIPE_W: the next pipe is behind the bird */
#define SCORE_X 48                   /* BIRD_X + BIRD_W / 2 - PIPE_W / 2 */
#define GAP_TOP_MIN 80
#define ROT_FLAP 45
#define ROT_SPEED 3
#define ROT_MIN (-90)

/* Rows of the state, in the order of rules.FEATURE_NAMES, then the episode statistics. */
enum {
    LAST_X, LAST_TOP, LAST_BOTTOM,
    NEXT_X, NEXT_TOP, NEXT_BOTTOM,
    NEXT_NEXT_X, NEXT_NEXT_TOP, NEXT_NEXT_BOTTOM,
    BIRD_Y, BIRD_SPEED, BIRD_ROT,
    SCORE, LENGTH, RETURN,
    STATE_ROWS
};
#define FEATURES 12
#define BLOCK 64

/* The settings of the game (the same for all N envs), filled once by kernel.py. */
typedef struct {
    int64_t num_envs;
    int64_t gap_table_size;          /* a power of two */
    int32_t draws_are_int64;         /* the dtype of `draws` */
    int32_t ceiling_crash;           /* rule 4: 1 = "crash", 0 = "clamp" */
    float gravity;                   /* px/frame² */
    float flap_speed;                /* px/frame */
    float max_fall_speed;            /* px/frame */
    float pipe_speed;                /* px/frame */
    float pipe_gap;                  /* px */
    float reward_alive;              /* the three float32 rewards of FlappyConfig.rewards */
    float reward_alive_and_pipe;
    float reward_crash;
    float max_score;                 /* rule 10: truncation caps, +inf where there is none */
    float max_episode_steps;
    float feature_mid[FEATURES];     /* FlappyConfig.feature_mid and feature_scale */
    float feature_scale[FEATURES];
    float first_obs[FEATURES];       /* the first observation of every episode (batched.py) */
} FlappyParams;

/* A block of envs: their columns of the state, row by row, and what a step computes. Flags
 * are int32 0/1 so that the loops mix them with float32 values four at a time. */
typedef struct {
    float s[STATE_ROWS][BLOCK];
    int64_t draws[BLOCK];            /* draws of the env's stream used so far */
    int32_t flap[BLOCK], hit_ceiling[BLOCK], shift[BLOCK];
    int32_t crash[BLOCK], truncated[BLOCK], done[BLOCK];
    float reward[BLOCK];
    float final_stats[3][BLOCK];     /* score, length, return at the end of the step */
    float features[FEATURES][BLOCK];
} Block;

/* 1-5. Flap or fall, rotation, move, ceiling, scroll. */
static void fly(const FlappyParams *p, Block *b)
{
    const float gravity = p->gravity, flap_speed = p->flap_speed;
    const float max_fall_speed = p->max_fall_speed, pipe_speed = p->pipe_speed;
    const int32_t clamp = !p->ceiling_crash;
    float *speed = b->s[BIRD_SPEED], *rot = b->s[BIRD_ROT], *y = b->s[BIRD_Y];
    for (int j = 0; j < BLOCK; j++) {
        /* 1-2. A flap sets [speed, rotation] to [flap_speed, 45]; else gravity, and 3° less. */
        float v = speed[j] + gravity, r = rot[j] - ROT_SPEED;
        v = v < max_fall_speed ? v : max_fall_speed;
        r = r > ROT_MIN ? r : ROT_MIN;
        v = b->flap[j] ? flap_speed : v;
        rot[j] = b->flap[j] ? ROT_FLAP : r;
        /* 3. Move; the bird cannot sink into the ground. */
        float top = y[j] + v;
        top = top < GROUND_Y - BIRD_H ? top : GROUND_Y - BIRD_H;
        /* 4. Ceiling: the bird stops at y = 0; "clamp" zeroes its speed ("crash": rule 7). */
        const int32_t hit = top < 0;
        b->hit_ceiling[j] = hit;
        speed[j] = hit & clamp ? 0.0f : v;
        y[j] = hit ? 0.0f : top;
    }
    /* 5. Scroll: every pipe moves pipe_speed px to the left. */
    for (int j = 0; j < BLOCK; j++) {
        b->s[LAST_X][j] -= pipe_speed;
        b->s[NEXT_X][j] -= pipe_speed;
        b->s[NEXT_NEXT_X][j] -= pipe_speed;
        b->shift[j] = b->s[NEXT_X][j] < SHIFT_X;   /* rule 6's test */
    }
}

/* 6. Where the next pipe is behind the bird (among the block's first m envs, the real ones):
 * the pipes shift (next → last, next-next → next) and a new pipe spawns on the right, its
 * gap top from draw c of the env's stream (c: the draws used so far). */
static void shift_pipes(const FlappyParams *p, Block *b, int m, const uint8_t *table, int64_t first)
{
    const int64_t mask = p->gap_table_size - 1;
    for (int j = 0; j < m; j++) {
        if (!b->shift[j])
            continue;
        for (int r = LAST_X; r < NEXT_NEXT_X; r++)
            b->s[r][j] = b->s[r + 3][j];
        const uint8_t *gaps = &table[(first + j) * p->gap_table_size];
        const float top = (float)gaps[b->draws[j] & mask] + GAP_TOP_MIN;
        b->s[NEXT_NEXT_X][j] = PIPE_SPAWN_X;
        b->s[NEXT_NEXT_TOP][j] = top;
        b->s[NEXT_NEXT_BOTTOM][j] = top + p->pipe_gap;
    }
}

/* 7-10. Crash, score, reward, episode end; and the episode's statistics. */
static void judge(const FlappyParams *p, Block *b)
{
    const int32_t ceiling_crash = p->ceiling_crash;
    const float pipe_speed = p->pipe_speed, max_score = p->max_score;
    const float max_episode_steps = p->max_episode_steps, alive = p->reward_alive;
    const float alive_and_pipe = p->reward_alive_and_pipe, crashed = p->reward_crash;
    for (int j = 0; j < BLOCK; j++) {
        const float x = b->s[NEXT_X][j], y = b->s[BIRD_Y][j];
        /* 7. Crash: the ground, the ceiling ("crash" rule), or the bird's box overlapping the
         * next pipe (the pipe within the bird's columns, the bird not within the gap). */
        const int32_t in_columns = (BIRD_X - PIPE_W < x) & (x < BIRD_X + BIRD_W);
        const int32_t in_gap = (b->s[NEXT_TOP][j] <= y) & (y + BIRD_H <= b->s[NEXT_BOTTOM][j]);
        const int32_t crash = (y >= GROUND_Y - BIRD_H) | (b->hit_ceiling[j] & ceiling_crash)
                              | (in_columns & !in_gap);
        /* 8. Score: the next pipe's centre crosses the bird's centre on this frame. */
        const int32_t passed = !crash & (SCORE_X - pipe_speed < x) & (x <= SCORE_X);
        /* 9. Reward. */
        const float reward_if_alive = passed ? alive_and_pipe : alive;
        const float reward = crash ? crashed : reward_if_alive;
        const float score = b->s[SCORE][j] + (passed ? 1.0f : 0.0f);
        const float length = b->s[LENGTH][j] + 1.0f;
        const float episode_return = b->s[RETURN][j] + reward;
        /* 10. Episode end: a crash terminates; the score cap or the step limit truncates. */
        const int32_t truncated = (score >= max_score) | (length >= max_episode_steps);
        b->s[SCORE][j] = b->final_stats[0][j] = score;
        b->s[LENGTH][j] = b->final_stats[1][j] = length;
        b->s[RETURN][j] = b->final_stats[2][j] = episode_return;
        b->reward[j] = reward;
        b->crash[j] = crash;
        b->truncated[j] = truncated;
        b->done[j] = crash | truncated;
    }
}

/* The 12 normalised features of the block's state (FlappyBirdEnv._observe): a pipe with no
 * pixel on screen is reported at the edge it lies beyond with an open gap (top 0, bottom
 * GROUND_Y); then (raw - mid) * scale. As `_features_of` does it: centre (raw - mid), then for
 * a hidden pipe clamp the centred x to the edge and put the centred open gap, then scale. */
static void observe(const FlappyParams *p, Block *b)
{
    const float *mid = p->feature_mid;
    for (int pipe = 0; pipe < 3; pipe++) {
        const int k = 3 * pipe;   /* rows k, k+1, k+2: x, gap top, gap bottom */
        const float edge = SCREEN_W - mid[k];   /* |x - mid| ≥ edge: no pixel on screen */
        const float open_top = 0.0f - mid[k + 1], open_bottom = GROUND_Y - mid[k + 2];
        for (int j = 0; j < BLOCK; j++) {
            const float x = b->s[k][j] - mid[k];
            const float top = b->s[k + 1][j] - mid[k + 1], bottom = b->s[k + 2][j] - mid[k + 2];
            const int32_t hidden = (x >= edge) | (x <= -edge);
            const float at_most_edge = x < edge ? x : edge;
            b->features[k][j] = at_most_edge > -edge ? at_most_edge : -edge;
            b->features[k + 1][j] = hidden ? open_top : top;
            b->features[k + 2][j] = hidden ? open_bottom : bottom;
        }
    }
    for (int k = BIRD_Y; k <= BIRD_ROT; k++)
        for (int j = 0; j < BLOCK; j++)
            b->features[k][j] = b->s[k][j] - mid[k];
    for (int k = 0; k < FEATURES; k++) {
        const float scale = p->feature_scale[k];
        for (int j = 0; j < BLOCK; j++)
            b->features[k][j] *= scale;
    }
}

/* Autoreset (SAME_STEP): an ended episode restarts at once, its first two pipes with the
 * next two unused draws (c, c+1, or c+1, c+2 when a pipe spawned this step); its
 * observation is then the first observation. Also counts the draws used this step. */
static void autoreset(const FlappyParams *p, Block *b, int m, const uint8_t *table, int64_t first)
{
    const int64_t mask = p->gap_table_size - 1;
    for (int j = 0; j < m; j++) {
        const int64_t next = b->draws[j] + b->shift[j];   /* the next unused draw */
        b->draws[j] = next + 2 * b->done[j];
        if (!b->done[j])
            continue;
        const uint8_t *gaps = &table[(first + j) * p->gap_table_size];
        const float top0 = (float)gaps[next & mask] + GAP_TOP_MIN;
        const float top1 = (float)gaps[(next + 1) & mask] + GAP_TOP_MIN;
        const float start[STATE_ROWS] = {
            -PIPE_W, 0.0f, GROUND_Y,   /* no pipe behind the bird: one already off screen */
            FIRST_PIPE_X, top0, top0 + p->pipe_gap,
            SECOND_PIPE_X, top1, top1 + p->pipe_gap,
            BIRD_START_Y, p->flap_speed, ROT_FLAP,   /* as if it had just flapped */
            0.0f, 0.0f, 0.0f,
        };
        for (int r = 0; r < STATE_ROWS; r++)
            b->s[r][j] = start[r];
    }
}

/* Actions `first` to `first + m - 1` (1, 2, 4 or 8-byte integers, or bools) as 0/1 flaps:
 * any non-zero value flaps. */
#define READ_FLAPS(type) \
    for (int j = 0; j < m; j++) \
        flap[j] = ((const type *)actions)[first + j] != 0
static void read_flaps(const void *actions, int32_t bytes, int64_t first, int m, int32_t *flap)
{
    switch (bytes) {
    case 1: READ_FLAPS(uint8_t); break;
    case 2: READ_FLAPS(uint16_t); break;
    case 4: READ_FLAPS(uint32_t); break;
    default: READ_FLAPS(uint64_t); break;
    }
}

/* The number of actions that are neither 0 nor 1 (their bits read as unsigned numbers). */
#define COUNT_BAD(type) \
    for (int64_t i = 0; i < n; i++) \
        bad += ((const type *)actions)[i] > 1
static int64_t count_bad_actions(const void *actions, int32_t bytes, int64_t n)
{
    int64_t bad = 0;
    switch (bytes) {
    case 1: COUNT_BAD(uint8_t); break;
    case 2: COUNT_BAD(uint16_t); break;
    case 4: COUNT_BAD(uint32_t); break;
    default: COUNT_BAD(uint64_t); break;
    }
    return bad;
}

/* Steps all N envs and writes the outputs (see the top of this file). Returns 0, or, when
 * `check_actions` is set and some action is neither 0 nor 1, the number of such actions, and
 * then changes nothing. */
int64_t flappy_step(const FlappyParams *p, float *state, void *draws, const uint8_t *table,
                    const void *actions, int32_t action_bytes, int32_t check_actions,
                    float *obs, float *final_obs, float *reward, float *score,
                    float *final_score, float *final_length, float *final_return,
                    uint8_t *terminated, uint8_t *truncated, uint8_t *done)
{
    const int64_t n = p->num_envs;
    if (check_actions) {
        const int64_t bad = count_bad_actions(actions, action_bytes, n);
        if (bad)
            return bad;
    }
    Block b;
    /* The rule loops always run over a whole block: in a last, partial block the columns
     * past N hold zeros or the previous block's values, computed on and never written back. */
    memset(&b, 0, sizeof b);
    for (int64_t first = 0; first < n; first += BLOCK) {
        const int m = (int)(n - first < BLOCK ? n - first : BLOCK);   /* envs in this block */
        const size_t row_bytes = (size_t)m * sizeof(float);
        for (int r = 0; r < STATE_ROWS; r++)
            memcpy(b.s[r], &state[r * n + first], row_bytes);
        for (int j = 0; j < m; j++)
            b.draws[j] = p->draws_are_int64 ? ((int64_t *)draws)[first + j]
                                            : ((int32_t *)draws)[first + j];
        read_flaps(actions, action_bytes, first, m, b.flap);

        fly(p, &b);                          /* 1-5 */
        shift_pipes(p, &b, m, table, first); /* 6 */
        judge(p, &b);                        /* 7-10 */
        observe(p, &b);                      /* final_obs: the state before any reset */
        autoreset(p, &b, m, table, first);

        for (int r = 0; r < STATE_ROWS; r++)
            memcpy(&state[r * n + first], b.s[r], row_bytes);
        for (int j = 0; j < m; j++) {
            const int64_t i = first + j;
            if (p->draws_are_int64)
                ((int64_t *)draws)[i] = b.draws[j];
            else
                ((int32_t *)draws)[i] = (int32_t)b.draws[j];
            terminated[i] = (uint8_t)b.crash[j];
            truncated[i] = (uint8_t)b.truncated[j];
            done[i] = (uint8_t)b.done[j];
        }
        /* final_obs, one row of 12 per env; obs the same, but the first observation where
         * the episode restarted. */
        float *final_rows = &final_obs[FEATURES * first], *obs_rows = &obs[FEATURES * first];
        for (int j = 0; j < m; j++)
            for (int k = 0; k < FEATURES; k++)
                final_rows[FEATURES * j + k] = b.features[k][j];
        memcpy(obs_rows, final_rows, FEATURES * row_bytes);
        for (int j = 0; j < m; j++)
            if (b.done[j])
                memcpy(&obs_rows[FEATURES * j], p->first_obs, sizeof p->first_obs);
        memcpy(&reward[first], b.reward, row_bytes);
        memcpy(&score[first], b.s[SCORE], row_bytes);   /* info["score"]: after the reset */
        memcpy(&final_score[first], b.final_stats[0], row_bytes);
        memcpy(&final_length[first], b.final_stats[1], row_bytes);
        memcpy(&final_return[first], b.final_stats[2], row_bytes);
    }
    return 0;
}
