"""Practise: exercises graded by the formula tests (`exercise`, `check`), and bug hunts (`bughunt`).

    python -m lessons exercise AD-4          write exercises/ad4_gae.py: signature, docstring, a body to fill
    python -m lessons check AD-4 [FILE]      run AD-4's marked tests with your function in place of the project's
    python -m lessons bughunt [--seed N]     plant one silent bug in a copy of the project; --reveal shows it

`check` runs pytest in a subprocess with this module as a plugin (`-p lessons.practise`): the
environment variable `PROXIMAL_PRACTISE` (JSON) names the learner's file and function and the
project's function it replaces; for each test the plugin swaps the project's function — in its
defining module and in every module that imported it by name — for the learner's, records the
calls the test makes (inputs, the project's output, the learner's output), and writes each test's
outcome to a JSON file that `check` reads back into one ✓/✗ line per test.

The same plugin, given `variants`, runs each listed test once per variant: for the exercises, the
project's own code read from an exercise file, the untouched stub and a plausible wrong version
(the proof that the grading is honest); for the bugs, the function that holds a bug's line compiled
from a copy of its file with the bug planted, and from an unchanged copy (the control). So
`tests/test_practise.py` checks every exercise, and every bug of the list, in one pytest run each.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXERCISES_DIR = ROOT / "exercises"
ENV = "PROXIMAL_PRACTISE"


# ---- the exercises -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exercise:
    """One formula's exercise: the project's function the learner writes again (`module.function`
    or `module.Class.method`), the marked tests that call it directly and run in a second (the
    ones that prove the grading honest), and a plausible mistake: (old line, new line) in its source."""

    target: str
    grading: tuple[str, ...]
    wrong: tuple[str, str]


_ADV, _LOSS, _KL, _PREF = "tests/test_advantages.py::", "tests/test_losses.py::", "tests/test_kl.py::", \
    "tests/test_preference.py::"

EXERCISES: dict[str, Exercise] = {
    "PG-1": Exercise("core.kl.kl_regularized_objective",
                     ("tests/test_formulas_pg.py::test_objective_is_the_prompt_average_of_per_prompt_expectations",),
                     ("* rewards).sum(dim=-1)", "* rewards).mean(dim=-1)")),
    "PG-4": Exercise("core.surrogates.score_function_surrogate",
                     (_LOSS + "test_score_function_gradient_equals_exact_gradient_by_enumeration",),
                     ("return logprobs * advantages.detach()", "return logprobs.detach() * advantages")),
    "IS-1": Exercise("core.losses.ratio_surrogate",
                     (_LOSS + "test_ratio_surrogate_gradient_at_old_policy_is_the_policy_gradient",),
                     ("ratio = torch.exp(logprobs - old_logprobs.detach())",
                      "ratio = torch.exp(logprobs.detach() - old_logprobs)")),
    "IS-2": Exercise("core.preference.sequence_logprobs",
                     ("tests/test_formulas_pg.py::test_sequence_logprob_and_ratio_are_masked_sums_of_token_terms",),
                     ("return masked_sum(token_logprobs, mask, dim=-1)", "return token_logprobs.sum(dim=-1)")),
    "TR-1": Exercise("core.trpo.conjugate_gradient",
                     ("tests/test_trpo.py::test_conjugate_gradient_solves_spd_system",),
                     ("direction = residual + (new_residual_sq / residual_sq) * direction",
                      "direction = residual")),
    "TR-2": Exercise("core.surrogates.kl_penalty_surrogate",
                     (_LOSS + "test_kl_penalty_surrogate_value_and_gradient",),
                     ("- beta *", "+ beta *")),
    "TR-3": Exercise("core.kl.AdaptiveKLController._rule",
                     (_KL + "test_adaptive_controller_trace",),
                     ("return self.beta * self.factor", "return self.beta / self.factor")),
    "TR-4": Exercise("core.kl.ProportionalKLController._rule",
                     (_KL + "test_proportional_controller_trace",),
                     ("min(max(measured_kl / self.target - 1.0, -0.2), 0.2)", "measured_kl / self.target - 1.0")),
    "CL-1": Exercise("core.losses.clipped_surrogate", (_LOSS + "test_clipped_surrogate_hand_cases",),
                     ("return torch.minimum(ratio * advantages, clipped)",
                      "return torch.maximum(ratio * advantages, clipped)")),
    "CL-2": Exercise("core.losses.clipped_surrogate", (_LOSS + "test_why_the_min_six_cases",),
                     ("return torch.minimum(ratio * advantages, clipped)", "return clipped")),
    "CL-3": Exercise("core.losses.clipped_surrogate", (_LOSS + "test_clipped_surrogate_is_a_lower_bound",),
                     ("return torch.minimum(ratio * advantages, clipped)",
                      "return torch.maximum(ratio * advantages, clipped)")),
    "DA-1": Exercise("core.losses.clipped_surrogate", (_LOSS + "test_clip_higher_hand_case",),
                     ("1.0 - clip_coef, 1.0 + clip_coef_high", "1.0 - clip_coef_high, 1.0 + clip_coef")),
    "CL-4": Exercise("core.losses.value_loss", (_LOSS + "test_value_loss_hand_case_with_and_without_clipping",),
                     ("return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)",
                      "return 0.5 * torch.minimum(unclipped, (clipped_values - returns) ** 2)")),
    "AC-2": Exercise("core.ppo.ppo_update",
                     ("tests/test_ppo.py::test_ppo_solves_a_two_token_language_task_with_masks",),
                     ("loss.backward()", "(-loss).backward()")),
    "RM-3": Exercise("llm.rlhf.per_token_rewards",
                     ("tests/test_llm_rlhf.py::test_per_token_rewards_hand_case_score_on_eos_and_missing_eos_penalty",),
                     ("last = mask.sum(dim=1).long() - 1", "last = mask.sum(dim=1).long()")),
    "AD-2": Exercise("core.returns.td_residuals", (_ADV + "test_td_residual_hand_case",),
                     ("gamma * not_terminal * next_values", "gamma * next_values")),
    "AD-3": Exercise("core.returns.k_step_advantages", (_ADV + "test_k_step_reward_form_equals_delta_sum",),
                     ("gamma**steps * after", "gamma ** (steps - 1) * after")),
    "AD-4": Exercise("core.advantages.gae", (_ADV + "test_gae_recursion_equals_naive_loop",
                                             _ADV + "test_gae_limits_lambda_zero_and_one"),
                     ("delta = rewards + gamma * not_terminal * next_values - values",
                      "delta = rewards + gae_lambda * not_terminal * next_values - values")),
    "AD-5": Exercise("core.advantages.gae", (_ADV + "test_truncation_bootstraps_and_termination_does_not",
                                             _ADV + "test_no_advantage_leaks_across_episodes"),
                     ("decay = gamma * gae_lambda * not_done", "decay = gamma * gae_lambda")),
    "AD-7": Exercise("core.returns.lambda_returns", (_ADV + "test_lambda_return_recursion_equals_gae_plus_values",),
                     ("mixed = (1 - gae_lambda) * next_values[..., t] + gae_lambda * g_next",
                      "mixed = gae_lambda * next_values[..., t] + (1 - gae_lambda) * g_next")),
    "KL-1": Exercise("core.kl.categorical_kl", (_KL + "test_categorical_kl_equals_enumeration",),
                     ("(logq.exp() * (logq - logp))", "(logp.exp() * (logp - logq))")),
    "KL-2": Exercise("core.kl.kl_estimate", (_KL + "test_estimator_expectations_by_enumeration",
                                             _KL + "test_estimator_bias_sign_and_variance_by_sampling"),
                     ("return torch.expm1(log_r) - log_r", "return -log_r")),
    "KL-3": Exercise("core.kl.kl_estimate", (_KL + "test_estimator_gradients_as_losses_exactly",),
                     ("return 0.5 * log_r**2", "return 0.5 * log_r.detach() ** 2")),
    "RM-1": Exercise("core.preference.bradley_terry_loss",
                     (_LOSS + "test_bradley_terry_value_gradient_and_shift_invariance",),
                     ("return -F.logsigmoid(chosen_scores - rejected_scores)",
                      "return -F.logsigmoid(rejected_scores - chosen_scores)")),
    "RM-2": Exercise("core.kl.kl_regularized_optimum",
                     ("tests/test_formulas_rlhf.py::test_small_beta_goes_greedy_and_large_beta_stays_at_the_reference",),
                     ("rewards / beta", "rewards * beta")),
    "RM-4": Exercise("core.kl.kl_regularized_objective",
                     ("tests/test_formulas_rlhf.py::test_with_beta_zero_the_gradient_is_the_reward_only_gradient",),
                     ("return expected_reward - beta *", "return expected_reward.detach() - beta *")),
    "GR-1": Exercise("core.group.group_advantages", (_ADV + "test_grpo_group_advantage_hand_case",),
                     ("rewards.std(dim=-1, keepdim=True)", "rewards.std(dim=0, keepdim=True)")),
    "DR-1": Exercise("core.group.group_advantages", (_ADV + "test_dr_grpo_advantage_has_no_std",),
                     ("    if not scale_by_std:\n        return centred", "    if not scale_by_std:\n        pass")),
    "DA-2": Exercise("core.group.informative_groups", (_ADV + "test_informative_groups_matches_a_loop",),
                     ("(rewards != rewards[:, :1])", "(rewards != rewards[:1, :])")),
    "DA-4": Exercise("core.group.overlong_penalty", (_ADV + "test_overlong_penalty_pieces_and_continuity",),
                     (" / cache_length", " / max_length")),
    "GR-2": Exercise("core.masked.reduce_loss", (_LOSS + "test_reductions_equal_plain_loops",),
                     ("return ((x * mask).sum(dim=-1) / lengths).mean()", "return masked_mean(x, mask)")),
    "GR-3": Exercise("core.masked.reduce_loss", (_LOSS + "test_length_bias_per_token_weight",),
                     ("return ((x * mask).sum(dim=-1) / lengths).mean()", "return masked_mean(x, mask)")),
    "DA-3": Exercise("core.masked.reduce_loss", (_LOSS + "test_token_mean_over_the_batch_adds_up_across_minibatches",),
                     ("return real.sum() / n_tokens", "return masked_mean(x, mask)")),
    "DP-1": Exercise("core.preference.dpo_loss",
                     (_PREF + "test_dpo_hand_case", _PREF + "test_dpo_gradient_signs_and_weights"),
                     ("implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta),",
                      "implicit_rewards(policy_chosen_logps, ref_chosen_logps, 1.0),")),
    "DP-2": Exercise("core.preference.ipo_loss", (_PREF + "test_ipo_hand_case",),
                     ("(h - 1.0 / (2.0 * tau)) ** 2", "(h - 1.0 / tau) ** 2")),
    "DP-3": Exercise("core.preference.kto_loss", (_PREF + "test_kto_hand_case",),
                     ("torch.sigmoid(beta * (z0 - log_ratio))", "torch.sigmoid(beta * (log_ratio - z0))")),
}

# Formulas implemented in core/ whose marked tests cannot grade one standalone function would get
# their lesson's own exercise here (ID → what to do), listed by `exercise` and named by the lesson.
LESSON_LEVEL: dict[str, str] = {}  # none at present: every formula of core/ grades a function of its own


def formula_of(words: str) -> str | None:
    word = words.strip().upper()
    return word if word in EXERCISES else None


def _resolve(target: str):
    """`core.kl.kl_estimate` → (module, None, function); `core.kl.Cls.meth` → (module, class, function)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        owner = None
        obj = module
        for name in parts[cut:]:
            owner, obj = obj, getattr(obj, name)
        return module, (owner if inspect.isclass(owner) else None), obj
    raise ImportError(f"cannot import {target}")


def _function_node(target: str) -> tuple[Path, str, ast.FunctionDef, ast.Module]:
    module, cls, fn = _resolve(target)
    path = Path(inspect.getsourcefile(module))
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    body = tree.body
    if cls is not None:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == fn.__name__)
    return path, source, node, tree


def where(target: str) -> str:
    """`core/advantages.py:85` — where the project's implementation starts (its `def` line)."""
    path, _, node, _ = _function_node(target)
    return f"{path.relative_to(ROOT).as_posix()}:{node.lineno}"


def function_name(target: str) -> str:
    return target.split(".")[-1]


def default_file(formula_id: str) -> Path:
    name = function_name(EXERCISES[formula_id].target).strip("_")
    return EXERCISES_DIR / f"{formula_id.replace('-', '').lower()}_{name}.py"


def exercise_source(formula_id: str, variant: str = "stub") -> str:
    """The exercise file: imports, then the function with its signature and docstring, its body
    `raise NotImplementedError` ("stub"), the project's own ("reference") or the project's with
    the exercise's plausible mistake ("wrong")."""
    exercise = EXERCISES[formula_id]
    path, source, node, tree = _function_node(exercise.target)
    lines = source.splitlines()
    module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    imports = [ast.get_source_segment(source, n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    imports = [i for i in imports if i and "core.catalog" not in i]
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    used = sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & defined - {node.name})
    if used:
        imports.append(f"from {module_name} import {', '.join(used)}  # the project's helpers you may use")
    function = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
    has_doc = bool(node.body) and isinstance(node.body[0], ast.Expr) and isinstance(
        getattr(node.body[0], "value", None), ast.Constant)
    if variant == "stub":
        head_end = node.body[0].end_lineno if has_doc else node.body[0].lineno - 1
        head = textwrap.dedent("\n".join(lines[node.lineno - 1:head_end]))
        indent = " " * 4
        if not has_doc:  # a method without a docstring of its own: its class's says what it does
            _, cls, _ = _resolve(exercise.target)
            doc = textwrap.indent(f'"""{inspect.getdoc(cls)}\n"""', indent)
            head = f"{head}\n{doc}"
        function = f"{head}\n{indent}raise NotImplementedError(\"write {node.name} ({formula_id}), then: " \
                   f"python -m lessons check {formula_id}\")"
    elif variant == "wrong":
        old, new = exercise.wrong
        if function.count(old) != 1:
            raise ValueError(f"{formula_id}: the mistake's anchor {old!r} must occur once in {exercise.target}")
        function = function.replace(old, new)
    method = " (a method: `self` is the controller)" if "." in exercise.target.split(".", 2)[-1] else ""
    header = [
        f'"""Exercise {formula_id}: write `{node.name}`{method}.',
        "",
        "Fill in the body below so that it does what the docstring says; keep the signature. Then:",
        f"    python -m lessons check {formula_id}    (add this file's path if it is not "
        f"exercises/{default_file(formula_id).name})",
        f"runs the tests marked {formula_id} with your function in place of the project's",
        f"(`{exercise.target}`, {where(exercise.target)}; read it only after your check passes).",
        '"""',
        "",
    ]
    return "\n".join([*header, *imports, "", "", function, ""])


def write_exercise(formula_id: str, path: Path | None = None) -> tuple[Path, bool]:
    """Write the stub for `formula_id`; never overwrites: returns (path, written)."""
    path = path or default_file(formula_id)
    if path.exists():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(exercise_source(formula_id, "stub"), encoding="utf-8")
    return path, True


# ---- the pytest plugin: swap the project's function for the learner's ----------------------------

def _load(file: str, name: str):
    spec = importlib.util.spec_from_file_location(f"_exercise_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"{file} defines no function {name}")
    return getattr(module, name)


def _numbers(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_numbers(v) for v in values) + "]"
    return f"{values:.4g}" if isinstance(values, float) else repr(values)


def _short(value, limit: int = 240) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        data = value.detach().cpu()
        text = _numbers(data.tolist()) if data.numel() <= 24 else \
            f"shape {tuple(data.shape)}, first values {_numbers(data.flatten()[:6].tolist())} …"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, tuple | list):
        text = "(" + ", ".join(_short(v, 80) for v in value) + ")"
    elif callable(value) and not isinstance(value, type):
        text = f"a function ({getattr(value, '__name__', '?')})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _differs(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return True
        return not torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), rtol=1e-5, atol=1e-6,
                                  equal_nan=True)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return abs(a - b) > 1e-6 + 1e-5 * abs(b)
    try:
        return bool(a != b)
    except Exception:
        return True


def _first_difference(obtained, expected) -> str:
    """`at [0, 4]: expected 0.9421, obtained 0.9259` for tensors of one shape that differ, else ""."""
    import torch

    if not (isinstance(obtained, torch.Tensor) and isinstance(expected, torch.Tensor)) or \
            obtained.shape != expected.shape or obtained.numel() <= 1:
        return ""
    a, b = obtained.detach().double().cpu(), expected.detach().double().cpu()
    gap = ((a - b).abs() - 1e-6 - 1e-5 * b.abs()).nan_to_num(nan=float("inf"))
    if not (gap > 0).any():
        return ""
    flat = int((gap > 0).flatten().nonzero()[0])
    index = list(torch.unravel_index(torch.tensor(flat), a.shape))
    at = [int(i) for i in index]
    return f"at {at}: expected {b.flatten()[flat].item():.6g}, obtained {a.flatten()[flat].item():.6g}"


class _Recorder:
    """The learner's function, wrapped: each call is passed on, and the first calls are recorded
    with the project's result on copies of the same inputs."""

    def __init__(self, learner, reference, is_method: bool):
        self.learner, self.reference, self.is_method, self.calls = learner, reference, is_method, []

    def __call__(self, *args, **kwargs):
        import torch

        record = len(self.calls) < 50
        if record:
            def copy_of(v):
                return v.detach().clone() if isinstance(v, torch.Tensor) else v
            ref_args = [copy_of(a) for a in args]
            if self.is_method and ref_args:
                ref_args[0] = copy.deepcopy(ref_args[0])
            try:
                with torch.no_grad():
                    expected = self.reference(*ref_args, **{k: copy_of(v) for k, v in kwargs.items()})
            except Exception as error:
                expected = error
            shown = args[1:] if self.is_method else args
            names = list(inspect.signature(self.learner).parameters)[1 if self.is_method else 0:]
            inputs = [f"{n}={_short(a)}" for n, a in zip(names, shown, strict=False)]
            inputs += [f"{k}={_short(v)}" for k, v in kwargs.items()]
        try:
            obtained = self.learner(*args, **kwargs)
        except Exception as error:
            if record:
                self.calls.append({"inputs": inputs, "expected": _short(expected),
                                   "obtained": f"raised {type(error).__name__}: {error}", "differs": True})
            raise
        if record:
            differs = isinstance(expected, Exception) or _differs(obtained, expected)
            self.calls.append({"inputs": inputs, "expected": _short(expected), "obtained": _short(obtained),
                               "differs": differs, "first_difference": _first_difference(obtained, expected)})
        return obtained


class _Swap:
    """Put `fn` in place of the project's `target` everywhere it is reachable by name; undo()."""

    def __init__(self, target: str, fn):
        module, cls, original = _resolve(target)
        name = function_name(target)
        self.undo_list = []
        if cls is not None:
            self.undo_list.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, lambda self_, *a, **k: fn(self_, *a, **k))
            return
        for mod in list(sys.modules.values()):
            namespace = getattr(mod, "__dict__", None)
            if not namespace:
                continue
            for key, value in list(namespace.items()):
                if value is original:
                    self.undo_list.append((mod, key, value))
                    setattr(mod, key, fn)

    def undo(self) -> None:
        for owner, key, value in reversed(self.undo_list):
            setattr(owner, key, value)


def _settings() -> dict | None:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else None


def pytest_generate_tests(metafunc) -> None:
    settings = _settings()
    if not settings or "variants" not in settings:
        return
    base = metafunc.definition.nodeid.split("[")[0]
    labels = [label for label, spec in settings["variants"].items() if base in spec["tests"]]
    if labels:
        metafunc.fixturenames.append("practise_variant")
        metafunc.parametrize("practise_variant", labels, ids=labels)


_RESULTS: list[dict] = []


def _substitution(item) -> dict | None:
    settings = _settings()
    if not settings:
        return None
    if "variants" in settings:
        callspec = getattr(item, "callspec", None)
        label = callspec.params.get("practise_variant") if callspec else None
        return settings["variants"].get(label) if label else None
    return settings if "target" in settings else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    spec = _substitution(item)
    if spec is None:
        yield
        return
    if "module_file" in spec:  # a bug planted in a copy of the module: its function, compiled from the copy
        swap = _Swap(spec["target"], _planted(spec["module_file"], spec["target"]))
        try:
            yield
        finally:
            swap.undo()
        return
    _, cls, reference = _resolve(spec["target"])
    try:
        learner = _load(spec["file"], function_name(spec["target"]))
    except Exception as error:
        item._practise = {"calls": [], "load_error": f"{type(error).__name__}: {error}"}
        swap = _Swap(spec["target"], _raiser(error))
        yield
        swap.undo()
        return
    recorder = _Recorder(learner, reference, cls is not None)
    swap = _Swap(spec["target"], recorder)
    try:
        yield
    finally:
        swap.undo()
        item._practise = {"calls": recorder.calls}


def _planted(module_file: str, target: str):
    """The function `target` names, as the module copy at `module_file` defines it."""
    _, cls, _ = _resolve(target)
    spec = importlib.util.spec_from_file_location(f"_planted_{abs(hash(module_file))}", module_file)
    copy_of_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = copy_of_module  # dataclasses look their module up while it runs
    spec.loader.exec_module(copy_of_module)
    owner = getattr(copy_of_module, cls.__name__) if cls is not None else copy_of_module
    return getattr(owner, function_name(target))


def _raiser(error: Exception):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _settings() is None or report.when != "call" and report.passed:
        return
    message = ""
    if report.failed and call.excinfo is not None:
        message = call.excinfo.exconly()
    doc = (getattr(item, "obj", None).__doc__ or "").strip().splitlines()
    callspec = getattr(item, "callspec", None)
    _RESULTS.append({
        "nodeid": item.nodeid, "when": report.when, "outcome": report.outcome,
        "variant": callspec.params.get("practise_variant") if callspec else None,
        "doc": doc[0] if doc else item.name, "message": message,
        **getattr(item, "_practise", {"calls": []}),
    })


def pytest_sessionfinish(session, exitstatus):
    settings = _settings()
    if settings and settings.get("results"):
        Path(settings["results"]).write_text(json.dumps(_RESULTS), encoding="utf-8")


def run_graded(settings: dict, nodes: list[str], extra: list[str] = (), root: Path = ROOT,
               ) -> tuple[int, list[dict], str]:
    """Run `nodes` of the project at `root` with the plugin and `settings`; (pytest's exit code,
    one result per test, pytest's output)."""
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results.json"
        path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, ENV: json.dumps({**settings, "results": str(results)}), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": path}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "lessons.practise",
                   "-p", "lessons.__main__", "--tb=no", "--no-header", *extra, *nodes]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        found = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else []
    return done.returncode, found, done.stdout + done.stderr


def check(formula_id: str, file: str | None) -> int:
    """`python -m lessons check ID [FILE]`: the marked tests, with the learner's function; exit 0 when all pass."""
    from lessons.catalog_scan import marked_test_ids

    exercise = EXERCISES[formula_id]
    path = Path(file) if file else default_file(formula_id)
    if not path.is_file():
        print(f"no file {path}: start the exercise with python -m lessons exercise {formula_id}", file=sys.stderr)
        return 2
    nodes = marked_test_ids().get(formula_id, [])
    settings = {"target": exercise.target, "file": str(path.resolve())}
    print(f"checking {function_name(exercise.target)} in {path} with the {len(nodes)} test(s) marked {formula_id}",
          flush=True)
    code, results, output = run_graded(settings, nodes, ["--formula", formula_id])
    if not results:
        print(output.strip()[-3000:], file=sys.stderr)
        return code or 1
    first = None
    for result in results:
        ok = result["outcome"] == "passed"
        name = result["nodeid"].split("::", 1)[1]
        phase = "" if result["when"] == "call" else f" (during {result['when']})"
        label = name if result["doc"] == name.split("::")[-1] else f"{result['doc']}  [{name}]"
        print(f"  {'✓' if ok else '✗'} {label}{phase}")
        if not ok and first is None:
            first = result
    if first is None:
        print(f"\nAll {len(results)} pass. Compare with the project's: {where(exercise.target)} "
              f"({function_name(exercise.target)}).")
        return 0
    failed = sum(r["outcome"] != "passed" for r in results)
    print(f"\n{failed} of {len(results)} fail. The first: {first['nodeid']}")
    if first.get("load_error"):
        print(f"  your file does not load: {first['load_error']}")
    calls = first.get("calls", [])
    shown = next((c for c in calls if c["differs"]), None)
    if shown:
        print(f"  a call that differs from the project's (call {calls.index(shown) + 1} of {len(calls)} recorded):")
        print("    inputs:   " + "\n              ".join(shown["inputs"]))
        print(f"    expected: {shown['expected']}")
        print(f"    obtained: {shown['obtained']}")
        if shown.get("first_difference"):
            print(f"    first difference {shown['first_difference']}")
    elif calls:
        print(f"  your function returned what the project's does on all {len(calls)} recorded call(s); "
              "the test checks something else (a gradient, or what the caller does with it)")
    message = first["message"].strip().splitlines()
    if message:
        print("  the test says: " + "\n    ".join(message[:12]))
    return 1


# ---- bug hunts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bug:
    """A one-line mistake: `old` (one line, or a line with the line before it as context) becomes
    `new` in `file`; `hint` says where to look and what to run; `tests` are the node ids that catch it."""

    name: str
    file: str
    old: str
    new: str
    hint: str
    tests: tuple[str, ...]


_GAE_HINT = "Run lesson 7 (python -m lessons run 7) and compare its advantages with a hand computation"
BUGS: tuple[Bug, ...] = (
    Bug("truncation treated as termination", "core/advantages.py",
        "    not_terminal = 1.0 - terminations\n",
        "    not_terminal = 1.0 - torch.clamp(terminations + truncations, max=1.0)\n",
        _GAE_HINT + " at a time limit.", (_ADV + "test_truncation_bootstraps_and_termination_does_not",)),
    Bug("the bootstrap not masked at termination", "core/advantages.py",
        "    delta = rewards + gamma * not_terminal * next_values - values  # (..., T)\n",
        "    delta = rewards + gamma * next_values - values  # (..., T)\n",
        _GAE_HINT + " at the end of an episode.", (_ADV + "test_truncation_bootstraps_and_termination_does_not",)),
    Bug("GAE's λ in place of γ in the TD residual", "core/advantages.py",
        "    delta = rewards + gamma * not_terminal * next_values - values  # (..., T)\n",
        "    delta = rewards + gae_lambda * not_terminal * next_values - values  # (..., T)\n",
        _GAE_HINT + " with γ ≠ λ.", (_ADV + "test_gae_recursion_equals_naive_loop",)),
    Bug("the advantage flows across episode boundaries", "core/advantages.py",
        "    decay = gamma * gae_lambda * not_done  # (..., T): how much of Â_{t+1} flows back into Â_t\n",
        "    decay = gamma * gae_lambda  # (..., T): how much of Â_{t+1} flows back into Â_t\n",
        _GAE_HINT + " around an episode's end.", (_ADV + "test_no_advantage_leaks_across_episodes",)),
    Bug("the entropy bonus's sign", "core/ppo.py",
        "    loss = loss - config.ent_coef * terms[\"entropy\"]\n",
        "    loss = loss + config.ent_coef * terms[\"entropy\"]\n",
        "Train briefly (python -m lessons run 9) and watch the `entropy` metric.",
        ("tests/test_ppo.py::test_entropy_bonus_sign_is_pinned",)),
    Bug("the clip range's low and high sides swapped (clip-higher on the wrong side)", "core/losses.py",
        "    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef_high) * advantages\n",
        "    clipped = torch.clamp(ratio, 1.0 - clip_coef_high, 1.0 + clip_coef) * advantages\n",
        "Run lesson 13 (DAPO's clip-higher) and lesson 6; look at the clipped objective's plot.",
        (_LOSS + "test_clip_higher_hand_case",)),
    Bug("max where PPO takes the min (an optimistic bound)", "core/losses.py",
        "    return torch.minimum(ratio * advantages, clipped)\n",
        "    return torch.maximum(ratio * advantages, clipped)\n",
        "Run lesson 6 (python -m lessons run 6) and read the six cases of the clipped objective.",
        (_LOSS + "test_clipped_surrogate_hand_cases", _LOSS + "test_why_the_min_six_cases")),
    Bug("the ratio exp(old − new)", "core/losses.py",
        "    advantages = advantages.detach()\n    ratio = torch.exp(logprobs - old_logprobs.detach())\n",
        "    advantages = advantages.detach()\n    ratio = torch.exp(old_logprobs.detach() - logprobs)\n",
        "Run lesson 6 and a short training (python -m lessons run 9); watch `clipfrac` and the return.",
        (_LOSS + "test_clipped_surrogate_hand_cases",)),
    Bug("the value clipped around the new value", "core/losses.py",
        "    clipped_values = old_values + torch.clamp(values - old_values, -vf_clip_coef, vf_clip_coef)\n",
        "    clipped_values = values + torch.clamp(old_values - values, -vf_clip_coef, vf_clip_coef)\n",
        "Run lesson 7 and watch `value_loss` with value clipping on.",
        (_LOSS + "test_value_loss_hand_case_with_and_without_clipping",)),
    Bug("k1 where k3 was meant", "core/kl.py",
        "        return torch.expm1(log_r) - log_r\n",
        "        return -log_r\n",
        "Run lesson 8 (python -m lessons run 8) and read the estimators' table: bias, sign, variance.",
        (_KL + "test_estimator_expectations_by_enumeration",
         _KL + "test_estimator_bias_sign_and_variance_by_sampling")),
    Bug("approx_kl measured in the wrong direction", "core/diagnostics.py",
        "    return masked_mean(kl_estimate(old_logprobs.detach(), logprobs.detach(), \"k3\"), mask)\n",
        "    return masked_mean(kl_estimate(logprobs.detach(), old_logprobs.detach(), \"k3\"), mask)\n",
        "Train briefly (python -m lessons run 9) and compare `approx_kl` with the exact KL.",
        (_LOSS + "test_approx_kl_hand_cases",)),
    Bug("GRPO's std taken over the batch, not the group", "core/group.py",
        "    return centred / (rewards.std(dim=-1, keepdim=True) + eps)\n",
        "    return centred / (rewards.std(dim=0, keepdim=True) + eps)\n",
        "Run lesson 13 (python -m lessons run 13) and check a group's advantages by hand.",
        (_ADV + "test_grpo_group_advantage_hand_case",)),
    Bug("advantages whitened with the padding counted", "core/masked.py",
        "    mean = masked_mean(x, mask)\n    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)\n",
        "    mean = x.mean()\n    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)\n",
        "Run lesson 11 (python -m lessons run 11): padded sequences, whitened advantages.",
        (_LOSS + "test_masked_helpers_ignore_padding",)),
    Bug("the reward-model score read one token past the end", "llm/rollout.py",
        "        last = lengths - 1\n",
        "        last = lengths\n",
        "Run lesson 10 (python -m lessons run 10) and compare the scores of padded replies.",
        ("tests/test_llm_rlhf.py::test_last_token_scores_is_not_one_past_the_end",)),
    Bug("the sequence log-probability summed over padding", "core/preference.py",
        "    return masked_sum(token_logprobs, mask, dim=-1)\n",
        "    return token_logprobs.sum(dim=-1)\n",
        "Run lesson 12 (python -m lessons run 12) with replies of different lengths.",
        ("tests/test_formulas_pg.py::test_sequence_logprob_and_ratio_are_masked_sums_of_token_terms",)),
    Bug("DPO's β dropped from the rejected reply's implicit reward", "core/preference.py",
        "        implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta),\n",
        "        implicit_rewards(policy_rejected_logps, ref_rejected_logps, 1.0),\n",
        "Run lesson 12 and compare DPO's loss with its hand case.",
        (_PREF + "test_dpo_hand_case",)),
    Bug("the seq-mean reduction divides by the batch's tokens", "core/masked.py",
        "        lengths = mask.sum(dim=-1).clamp(min=1.0)  # (B,)\n",
        "        lengths = mask.sum().clamp(min=1.0)  # (B,)\n",
        "Run lesson 13 and compare the three loss reductions on replies of different lengths.",
        (_LOSS + "test_reductions_equal_plain_loops",)),
    Bug("the adaptive KL controller moves β the wrong way", "core/kl.py",
        "            return self.beta * self.factor\n",
        "            return self.beta / self.factor\n",
        "Run lesson 5 (python -m lessons run 5) and watch β against the measured KL.",
        (_KL + "test_adaptive_controller_trace",)),
)


def enclosing_function(bug: Bug) -> str:
    """`core.losses.clipped_surrogate` (or `core.kl.Cls.method`): the function whose body holds the
    bug's changed line (every bug of the list changes a line inside a function or method)."""
    text = (ROOT / bug.file).read_text(encoding="utf-8")
    start = text.index(bug.old)
    changed = next(i for i, (a, b) in enumerate(zip(bug.old.splitlines(), bug.new.splitlines(), strict=True))
                   if a != b)
    line = text[:start].count("\n") + 1 + changed
    module = ".".join(Path(bug.file).with_suffix("").parts)
    for node in ast.parse(text).body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        for member in members:
            if isinstance(member, ast.FunctionDef) and member.body[0].lineno <= line <= member.end_lineno:
                prefix = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                return f"{module}.{prefix}{member.name}"
    raise ValueError(f"bug {bug.name!r}: line {line} of {bug.file} is in no function's body")


def planted_variants(folder: Path) -> dict[str, dict]:
    """For every bug: "bug: NAME" runs its tests with the function compiled from a copy of its file
    with the bug planted; "clean: NAME" with the same function compiled from an unchanged copy (the
    control: compiling a copy alone must break nothing). For `run_graded({"variants": ...})`."""
    variants = {}
    for i, bug in enumerate(BUGS):
        for kind in ("clean", "bug"):
            copy_dir = folder / f"{kind}{i:02d}"
            copy_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / bug.file, copy_dir / Path(bug.file).name)
            if kind == "bug":
                plant(Bug(bug.name, Path(bug.file).name, bug.old, bug.new, bug.hint, bug.tests), copy_dir)
            variants[f"{kind}: {bug.name}"] = {"target": enclosing_function(bug), "tests": list(bug.tests),
                                               "module_file": str(copy_dir / Path(bug.file).name)}
    return variants


def tracked_files(root: Path = ROOT) -> list[str]:
    """The project's files: `git ls-files`, or a walk that skips the virtual env, runs and exercises."""
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
        return [p for p in done.stdout.decode().split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", "runs", "exercises", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(root).parts)]


def copy_project(destination: Path, root: Path = ROOT) -> Path:
    for relative in tracked_files(root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    return destination


def plant(bug: Bug, project: Path) -> str:
    """Apply `bug` to the copy at `project`; returns the unified diff. Its anchor must match exactly once."""
    import difflib

    path = project / bug.file
    text = path.read_text(encoding="utf-8")
    count = text.count(bug.old)
    if count != 1:
        raise ValueError(f"bug {bug.name!r}: its line occurs {count} times in {bug.file} (must be once)")
    planted = text.replace(bug.old, bug.new)
    path.write_text(planted, encoding="utf-8")
    return "".join(difflib.unified_diff(text.splitlines(True), planted.splitlines(True),
                                        f"a/{bug.file}", f"b/{bug.file}", n=2))


def bughunt(seed: int | None, reveal: bool, where_to: str | None) -> int:
    """`python -m lessons bughunt [--seed N] [--reveal] [--dir D]`."""
    seed = random.SystemRandom().randrange(10_000) if seed is None else seed
    if seed < 0:
        print("--seed must be ≥ 0", file=sys.stderr)
        return 2
    bug = BUGS[random.Random(seed).randrange(len(BUGS))]
    folder = Path(where_to) if where_to else Path(tempfile.gettempdir()) / f"proximal-bughunt-{seed}"
    if reveal:
        print(f"bug hunt {seed}: {bug.name}\n")
        print(plant(bug, _fresh(bug)), end="")
        print("\nThe tests that catch it:")
        for node in bug.tests:
            print(f"  python -m pytest {node}")
        return 0
    if folder.exists() and any(folder.iterdir()):
        print(f"{folder} is not empty: remove it, or pass --dir to choose another folder", file=sys.stderr)
        return 2
    copy_project(folder)
    plant(bug, folder)
    print(f"Bug hunt {seed}: one line of the project in {folder} is wrong ({len(BUGS)} bugs on the list).")
    print(f"  cd {folder}")
    print(f"  {bug.hint}")
    print("  Narrow it down with the formula tests, run there: python -m lessons verify all (or a family: verify AD)")
    print(f"  When you have found it (git diff will not help: it is a plain copy), check: "
          f"python -m lessons bughunt --seed {seed} --reveal")
    return 0


def _fresh(bug: Bug) -> Path:
    """A scratch copy of just the bug's file, for --reveal's diff."""
    scratch = Path(tempfile.mkdtemp())
    (scratch / bug.file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / bug.file, scratch / bug.file)
    return scratch
