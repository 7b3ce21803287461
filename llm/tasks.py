"""Tasks the project generates itself: prompts, demonstrations, a hidden gold reward, preferences.

Nothing is downloaded; every dataset is a pure function of a seed. Two tasks:

`reviews` — short movie reviews from a small grammar.
    prompt  := "review: the " SUBJECT " was"
    reply   := " " LIST "." EOS
    LIST    := PHRASE | PHRASE " and " PHRASE | PHRASE ", " PHRASE " and " PHRASE
    PHRASE  := ADJ | "so " ADJ
    ADJ     := positive (great good fun lovely superb)  sentiment +1
             | neutral  (fine okay long plain)          sentiment  0
             | negative (bad dull awful weak boring)    sentiment −1
  Example: "review: the plot was" → " so lovely, dull and fun."
  Demonstrations (SFT data) draw 1–3 *distinct* adjectives uniformly, so the SFT policy is
  as negative as it is positive: its mean gold reward is about 0.

  Gold reward (stands in for human judgement; no model ever trains on it directly):
      grammatical reply:   Σ sentiment of its distinct adjectives − 1 per repeated adjective
      ungrammatical reply: −2
      and −1 more when the reply has no EOS.
  The best reachable gold reward is 3.0: a grammatical reply has at most three adjectives, each
  worth at most +1, and an ungrammatical one scores −2 or less. `best_gold()` confirms it by
  enumerating every grammatical reply.

  Preference data: two replies per prompt drawn from the same grammar by writers of random
  mood (each slot positive with probability mood ~ U(0, 1), so very positive and very negative
  replies are common), 25% of them with a repeated adjective and 10% corrupted (misspelt, cut
  short, no period), labelled by a simulated annotator who prefers reply a with probability
  σ((gold_a − gold_b)/τ) (Bradley–Terry on the gold reward, τ = `label_temperature`): labels
  are noisy the way human labels are.

  Blind spots, by design: no reply the annotator sees lists more than three adjectives (the
  grammar's limit), and only a few percent are misspelt. The reward model learns "more
  positive-looking words is better", not spelling or the length limit, so it over-rates
  " great, fun, lovely and good." and misspelt text full of positive-looking letters, which the
  gold reward calls ungrammatical (−2). PPO without the KL term finds such replies (llm/README.md
  shows the run); with it, they stay too unlikely under π_ref to be worth their KL.

`arithmetic` — "12+35=" → "47" EOS, operands 0–99.
  Gold reward (verifiable): 1 for the right answer followed by EOS, 0 for a wrong number,
  −1 for anything that is not a number or has no EOS. Best reachable: 1.0. Problems are split
  into train/test by a hash; SFT sees few enough examples that it is only partly right, which
  leaves room for RL (and for the group-relative methods that use this task).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import zlib
from dataclasses import dataclass

__all__ = [
    "Task",
    "ReviewsTask",
    "ArithmeticTask",
    "TASKS",
    "get_task",
    "PreferencePair",
    "sft_examples",
    "preference_pairs",
]

POSITIVE = ("great", "good", "fun", "lovely", "superb")
NEUTRAL = ("fine", "okay", "long", "plain")
NEGATIVE = ("bad", "dull", "awful", "weak", "boring")
SENTIMENT = {
    **{w: 1.0 for w in POSITIVE},
    **{w: 0.0 for w in NEUTRAL},
    **{w: -1.0 for w in NEGATIVE},
}
ADJECTIVES = POSITIVE + NEUTRAL + NEGATIVE
SUBJECTS = (
    "plot",
    "acting",
    "music",
    "ending",
    "cast",
    "story",
    "dialogue",
    "pacing",
    "script",
    "visuals",
)


@dataclass(frozen=True)
class PreferencePair:
    """One labelled comparison: the annotator preferred `chosen` over `rejected` for `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float
    gold_rejected: float


class Task:
    """What a task provides. Replies are strings without EOS; `has_eos` says if one followed."""

    name: str = ""
    max_new_tokens: int = 0
    """Generation budget in tokens (EOS included)."""
    best_gold_note: str = ""

    def sample_prompt(self, rng: random.Random, split: str = "train") -> str:
        raise NotImplementedError

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        """A reply written by the 'demonstrator' (SFT data)."""
        raise NotImplementedError

    def candidate_reply(self, prompt: str, rng: random.Random) -> str:
        """A reply shown to the simulated annotator (preference data)."""
        raise NotImplementedError

    def gold_reward(self, prompt: str, reply: str, has_eos: bool = True) -> float:
        raise NotImplementedError

    def best_gold(self) -> float:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# reviews
# ---------------------------------------------------------------------------------------------

_PHRASE = r"(?:so )?([a-z]+)"
_REVIEW_PATTERNS = [
    re.compile(rf"^ {_PHRASE}\.$"),
    re.compile(rf"^ {_PHRASE} and {_PHRASE}\.$"),
    re.compile(rf"^ {_PHRASE}, {_PHRASE} and {_PHRASE}\.$"),
]


def parse_review(reply: str) -> list[str] | None:
    """The adjectives of a grammatical review reply, or None when it breaks the grammar."""
    for pattern in _REVIEW_PATTERNS:
        m = pattern.match(reply)
        if m:
            words = list(m.groups())
            return words if all(w in SENTIMENT for w in words) else None
    return None


def format_review(phrases: list[str]) -> str:
    """[p1], [p1, p2] or [p1, p2, p3] → ' p1.', ' p1 and p2.', ' p1, p2 and p3.'"""
    if len(phrases) == 1:
        body = phrases[0]
    elif len(phrases) == 2:
        body = f"{phrases[0]} and {phrases[1]}"
    else:
        body = f"{', '.join(phrases[:-1])} and {phrases[-1]}"
    return f" {body}."


class ReviewsTask(Task):
    """Movie-review completions with a sentiment gold reward (see the module docstring)."""

    name = "reviews"
    max_new_tokens = 48  # the longest grammatical reply is 40 characters + EOS
    repeat_penalty = 1.0
    ungrammatical = -2.0
    missing_eos_penalty = 1.0
    intensifier_prob = 0.2
    corrupt_prob = 0.1
    repeat_prob = 0.25
    best_gold_note = (
        "3.0 = three distinct positive adjectives in a grammatical reply with EOS; found by "
        "enumerating every grammatical reply (ungrammatical replies score ≤ −2)"
    )

    def sample_prompt(self, rng: random.Random, split: str = "train") -> str:
        return f"review: the {rng.choice(SUBJECTS)} was"

    def _phrases(self, rng: random.Random) -> list[str]:
        n = rng.randint(1, 3)
        words = rng.sample(ADJECTIVES, n)  # distinct: the data never repeats an adjective
        return [("so " if rng.random() < self.intensifier_prob else "") + w for w in words]

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        return format_review(self._phrases(rng))

    def candidate_reply(self, prompt: str, rng: random.Random) -> str:
        # Replies shown to the annotator come from writers of every mood: a writer picks a
        # positive adjective with probability `mood` ~ U(0, 1) in each slot. Extreme replies
        # (all positive, all negative) are then common enough for the reward model to rank
        # them, as they would be when replies come from several different policies.
        mood = rng.random()
        n = rng.randint(1, 3)
        positives = rng.sample(POSITIVE, n)
        others = rng.sample(NEUTRAL + NEGATIVE, n)
        words = [positives[i] if rng.random() < mood else others[i] for i in range(n)]
        if n > 1 and rng.random() < self.repeat_prob:
            # a careless writer repeats a word (the SFT policy does too, now and then)
            i, j = rng.sample(range(n), 2)
            words[j] = words[i]
        phrases = [("so " if rng.random() < self.intensifier_prob else "") + w for w in words]
        reply = format_review(phrases)
        if rng.random() < self.corrupt_prob:
            reply = _corrupt(reply, rng)
        return reply

    def gold_reward(self, prompt: str, reply: str, has_eos: bool = True) -> float:
        words = parse_review(reply)
        if words is None:
            gold = self.ungrammatical
        else:
            distinct = set(words)
            gold = sum(SENTIMENT[w] for w in distinct) - self.repeat_penalty * (
                len(words) - len(distinct)
            )
        if not has_eos:
            gold -= self.missing_eos_penalty
        return gold

    def best_gold(self) -> float:
        """Maximum of the gold reward over every grammatical reply (22,764 of them)."""
        phrases = [p + w for w in ADJECTIVES for p in ("", "so ")]
        best = -math.inf
        for n in (1, 2, 3):
            for combo in itertools.product(phrases, repeat=n):
                best = max(best, self.gold_reward("", format_review(list(combo))))
        return best


def _corrupt(reply: str, rng: random.Random) -> str:
    """Break a reply: drop its final period, cut it short, or misspell one character. The
    result is ungrammatical (gold −2), so the reward model learns that broken text is bad.
    Repeating an adjective is *not* one of these ways: that is the designed blind spot."""
    for _ in range(10):
        kind = rng.randrange(3)
        if kind == 0:
            out = reply[:-1]
        elif kind == 1:
            out = reply[: rng.randint(2, max(2, len(reply) - 2))]
        else:
            i = rng.randrange(1, len(reply) - 1)
            out = reply[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + reply[i + 1 :]
        if parse_review(out) is None:
            return out
    return reply[:-1]


# ---------------------------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------------------------


class ArithmeticTask(Task):
    """Two-operand addition with a verifiable answer (see the module docstring)."""

    name = "arithmetic"
    max_new_tokens = 6  # at most 3 digits + EOS, with room for a wrong longer answer
    max_operand = 99
    best_gold_note = "1.0 = the correct sum followed by EOS"

    @staticmethod
    def split_of(a: int, b: int) -> str:
        # a fixed pseudo-random 80/20 split of the 10,000 problems. A linear rule such as
        # (7919a + 104729b) mod 5 is (4(a + b)) mod 5 and would put exactly the sums divisible by
        # 5 in the test split, answers whose last digit (0 or 5) training never shows; CRC-32
        # mixes the digits, so every last digit appears in both splits.
        return "test" if zlib.crc32(f"{a}+{b}".encode()) % 5 == 0 else "train"

    def sample_prompt(self, rng: random.Random, split: str = "train") -> str:
        while True:
            a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
            if self.split_of(a, b) == split:
                return f"{a}+{b}="

    @staticmethod
    def answer(prompt: str) -> int:
        a, b = prompt.rstrip("=").split("+")
        return int(a) + int(b)

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        return str(self.answer(prompt))

    def candidate_reply(self, prompt: str, rng: random.Random) -> str:
        right = self.answer(prompt)
        kind = rng.randrange(4)
        if kind == 0:
            return str(right)
        if kind == 1:
            return str(max(0, right + rng.choice((-10, -1, 1, 10))))  # a near miss
        if kind == 2:
            return str(rng.randint(0, 2 * self.max_operand))
        return str(right)[:-1] + "+"  # malformed

    def gold_reward(self, prompt: str, reply: str, has_eos: bool = True) -> float:
        if not has_eos or not reply.isdigit():
            return -1.0
        return 1.0 if int(reply) == self.answer(prompt) else 0.0

    def best_gold(self) -> float:
        return 1.0


TASKS = {"reviews": ReviewsTask, "arithmetic": ArithmeticTask}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]()


def sft_examples(task: Task, n: int, seed: int, split: str = "train") -> list[tuple[str, str]]:
    """n (prompt, demonstration) pairs, a pure function of `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = task.sample_prompt(rng, split)
        out.append((prompt, task.demonstration(prompt, rng)))
    return out


def preference_pairs(
    task: Task, n: int, seed: int, label_temperature: float = 0.5, split: str = "train"
) -> list[PreferencePair]:
    """n labelled pairs. The simulated annotator prefers a over b with probability
    σ((gold_a − gold_b) / τ), the Bradley–Terry model (RM-1) on the hidden gold reward, so a
    small gold difference is often labelled the wrong way round and a tie is a coin flip."""
    if label_temperature <= 0:
        raise ValueError(f"label_temperature must be > 0, got {label_temperature}")
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        prompt = task.sample_prompt(rng, split)
        a, b = task.candidate_reply(prompt, rng), task.candidate_reply(prompt, rng)
        if a == b:
            continue
        ga, gb = task.gold_reward(prompt, a), task.gold_reward(prompt, b)
        p_a = 1.0 / (1.0 + math.exp(-(ga - gb) / label_temperature))
        if rng.random() < p_a:
            pairs.append(PreferencePair(prompt, a, b, ga, gb))
        else:
            pairs.append(PreferencePair(prompt, b, a, gb, ga))
    return pairs
