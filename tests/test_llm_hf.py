"""Any Hugging Face causal LM through the LLM pipeline (`llm.model_interface`, `--model PATH`).

No download: tiny random-weight GPT-2 and Llama folders are written here by
`llm.random_model.write_random_model` (a byte-level BPE trained on the tasks' text; the GPT-2 one,
like GPT-2, has no pad token and BOS = EOS). Each check compares with an independent computation:
a row computed alone and unpadded, the whole sequence recomputed without a cache.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from core.ppo import PPOConfig, ppo_update
from llm import rlhf, sft
from llm.checkpoints import load_stage, stage_tokenizer
from llm.config import PipelineConfig, resolve
from llm.model_interface import HFModel, HFTokenizer, copy_model, load_hf_model
from llm.pipeline import main as pipeline_main
from llm.random_model import task_texts, write_random_model
from llm.reward_model import scalar_model_from
from llm.rlhf import collect_rollout, gold_scorer, make_evaluate, per_token_rewards, reward_model_scorer
from llm.rollout import encode_prompts, generate, reply_logits, reply_logprobs
from llm.sample import main as sample_main
from llm.tasks import get_task

CPU = torch.device("cpu")
TASK = get_task("reviews")
PROMPTS = ["review: the plot was", "review: it", "review: the acting felt", "review: honestly, the film was"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-models")
    return {
        arch: write_random_model(root / arch, arch=arch, n_layer=2, n_embd=32, n_head=2, vocab_size=320, context=96)
        for arch in ("gpt2", "llama")
    }


def _loaded(model_dirs, arch):
    path = model_dirs[arch]
    torch.manual_seed(0)
    return load_hf_model(path), HFTokenizer.load(path)


@pytest.fixture(params=["gpt2", "llama"])
def arch(request):
    return request.param


def test_tokenizers_round_trip_and_pad_is_never_eos(model_dirs):
    gpt2 = HFTokenizer.load(model_dirs["gpt2"])
    llama = HFTokenizer.load(model_dirs["llama"])
    assert gpt2.tokenizer.pad_token is None and gpt2.bos_id == gpt2.eos_id  # as GPT-2's own
    assert llama.tokenizer.pad_token == "<pad>" and len({llama.pad_id, llama.bos_id, llama.eos_id}) == 3
    for tok in (gpt2, llama):
        assert tok.pad_id not in (tok.eos_id, tok.bos_id)
        for text in task_texts(n=50, seed=3)[:100]:
            assert tok.decode(tok.encode(text, eos=True) + [tok.pad_id]) == text  # EOS ends the text


def test_left_padded_rows_compute_as_the_same_rows_alone(model_dirs, arch):
    model, tok = _loaded(model_dirs, arch)
    ids, mask = encode_prompts(tok, PROMPTS, 96, 8, CPU)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)  # (B, P, V)
        for i in range(len(PROMPTS)):
            row = torch.tensor([tok.encode(PROMPTS[i], bos=True)])
            alone = model.lm(input_ids=row).logits[0]  # the transformers model itself, no mask
            torch.testing.assert_close(padded[i, -row.shape[1]:], alone, atol=1e-5, rtol=1e-5)


def _record_step_logits(model: HFModel):
    """A forward hook keeping the last column of every call: the logits each step sampled from."""
    steps = []
    handle = model.register_forward_hook(lambda mod, args, out: steps.append(out[:, -1].detach().clone()))
    return steps, handle


def test_generation_with_the_cache_equals_full_recomputation(model_dirs, arch):
    model, tok = _loaded(model_dirs, arch)
    ids, mask = encode_prompts(tok, PROMPTS, 96, 12, CPU)
    runs = {}
    for use_cache in (True, False):
        steps, handle = _record_step_logits(model)
        gen = generate(model, ids, mask, max_new_tokens=12, eos_id=tok.eos_id, pad_id=tok.pad_id,
                       temperature=0.0, use_cache=use_cache)
        handle.remove()
        runs[use_cache] = (gen, torch.stack(steps, 1))  # (B, R, V)
    (cached, cached_logits), (full, full_logits) = runs[True], runs[False]
    assert torch.equal(cached.reply_ids, full.reply_ids)  # the same greedy tokens
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    # and the training forward on the whole sequence gives the same logits at every real reply token
    with torch.no_grad():
        train_logits = reply_logits(model, cached.input_ids, cached.attention_mask, ids.shape[1])
    real = cached.reply_mask.bool()
    torch.testing.assert_close(train_logits[real], cached_logits[real], atol=1e-5, rtol=1e-5)


def test_sampled_logprobs_equal_the_training_forward_and_the_first_ppo_minibatch_has_ratio_one(model_dirs, arch):
    policy, tok = _loaded(model_dirs, arch)
    value = scalar_model_from(policy)
    torch.nn.init.normal_(value.score_head.weight, std=0.1)
    steps, handle = _record_step_logits(policy)
    ro = collect_rollout(policy, copy_model(policy), value, gold_scorer(TASK), TASK, tok, PROMPTS * 2, CPU,
                         torch.Generator().manual_seed(1))
    handle.remove()
    gen = ro.gen
    R = gen.reply_ids.shape[1]
    # log π of each sampled token from the logits generate sampled it from (cache, step by step)
    at_sampling = torch.log_softmax(torch.stack(steps[:R], 1), -1).gather(2, gen.reply_ids.unsqueeze(-1))[..., 0]
    torch.testing.assert_close(ro.logprobs, at_sampling * gen.reply_mask, atol=1e-5, rtol=1e-5)
    # the update's forward (train mode, with gradients) on the same batch: ratio 1 before any step
    policy.train(), value.train()
    new, _ = reply_logprobs(policy, gen.input_ids, gen.attention_mask, gen.reply_ids)
    torch.testing.assert_close(new * gen.reply_mask, ro.logprobs, atol=1e-5, rtol=1e-5)
    advantages = torch.randn(ro.logprobs.shape, generator=torch.Generator().manual_seed(2)) * gen.reply_mask
    batch = {"input_ids": gen.input_ids, "attention_mask": gen.attention_mask, "actions": gen.reply_ids,
             "logprobs": ro.logprobs, "advantages": advantages, "returns": advantages + ro.values,
             "values": ro.values, "mask": gen.reply_mask}
    optimizer = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-3)
    stats = ppo_update(make_evaluate(policy, value), batch, optimizer,
                       PPOConfig(update_epochs=1, minibatch_size=8, batch_size=8, loss_reduction="token_mean"))
    assert abs(stats["losses/approx_kl"]) < 1e-6 and stats["losses/clipfrac"] == 0.0


def test_kl_to_an_identical_reference_is_exactly_zero(model_dirs, arch):
    policy, tok = _loaded(model_dirs, arch)
    ref = copy_model(policy)
    assert ref is not policy and all(p is not q for p, q in zip(ref.parameters(), policy.parameters()))
    ro = collect_rollout(policy, ref, None, gold_scorer(TASK), TASK, tok, PROMPTS, CPU,
                         torch.Generator().manual_seed(0))
    assert torch.equal(ro.logprobs, ro.ref_logprobs)
    _, kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.gen.reply_mask, ref_kl_coef=0.3)
    assert torch.count_nonzero(kl) == 0


def test_reward_lands_on_the_last_real_token_with_left_padding_and_no_pad_token(model_dirs):
    lm, tok = _loaded(model_dirs, "gpt2")
    assert tok.tokenizer.pad_token_id is None
    rm = scalar_model_from(lm)
    torch.nn.init.normal_(rm.score_head.weight, std=1.0)
    gen = generate(lm, *encode_prompts(tok, PROMPTS, 96, 10, CPU), max_new_tokens=10, eos_id=tok.eos_id,
                   pad_id=tok.pad_id, generator=torch.Generator().manual_seed(3))
    # make rows end at different lengths: cut each reply with an EOS at its own column
    for i, end in enumerate([1, 3, 6, 9]):
        gen.reply_ids[i, end] = tok.eos_id
        gen.reply_ids[i, end + 1:] = tok.pad_id
        gen.reply_mask[i] = (torch.arange(10) <= end).float()
    with torch.no_grad():
        scores = reward_model_scorer(rm)(gen, PROMPTS, None)
        for i, end in enumerate([1, 3, 6, 9]):
            row = tok.encode(PROMPTS[i], bos=True) + gen.reply_ids[i, : end + 1].tolist()
            assert row[-1] == tok.eos_id
            alone = rm.score_head(rm.lm.base_model(input_ids=torch.tensor([row])).last_hidden_state)[0, -1, 0]
            assert scores[i].item() == pytest.approx(alone.item(), abs=1e-5)


TINY = ["--sft-steps", "3", "--sft-batch-size", "4", "--sft-examples", "50", "--sft-lr", "1e-3",
        "--rm-steps", "2", "--rm-batch-size", "4", "--rm-pairs", "20", "--rm-eval-pairs", "8",
        "--ppo-iterations", "2", "--rollout-batch-size", "4", "--minibatch-size", "2", "--update-epochs", "1",
        "--eval-prompts", "4", "--pref-steps", "2", "--pref-batch-size", "4", "--pref-pairs", "8",
        "--pref-eval-pairs", "4", "--pref-eval-every", "2", "--group-prompts", "2", "--group-size", "2",
        "--group-iterations", "2", "--group-eval-prompts", "4", "--group-eval-every", "2", "--sampling-rounds", "1",
        "--no-progress", "--device", "cpu"]


def test_every_stage_runs_on_a_wrapped_model_and_its_checkpoints_load_back(model_dirs, arch, tmp_path, capsys):
    path, out = str(model_dirs[arch]), str(tmp_path)
    summary = pipeline_main(["--model", path, "--out", out, *TINY])  # SFT → reward model → PPO-RLHF
    assert summary["kl"]["final"] is not None and summary["rm_gold_agreement"] is not None
    # every method runs on one of the two models, and each model runs a method of each family (the
    # methods of a family differ in their loss's arguments only), to keep the file short
    preference, group = (("dpo", "kto"), ("dr_grpo",)) if arch == "gpt2" else (("ipo",), ("dapo",))
    for algo in preference:  # from the same sft.pt
        assert pipeline_main(["--model", path, "--out", out, "--algo", algo, "--stage", algo, *TINY])["algo"] == algo
    arithmetic = ["--model", path, "--out", str(tmp_path / "arithmetic"), "--task", "arithmetic", *TINY]
    assert pipeline_main([*arithmetic, "--algo", "grpo"])["algo"] == "grpo"  # SFT → GRPO
    for algo in group:
        assert pipeline_main([*arithmetic, "--algo", algo, "--stage", algo])["algo"] == algo
    tok = stage_tokenizer(tmp_path / "ppo.pt")
    models, _ = load_stage(tmp_path / "ppo.pt", tok)
    assert isinstance(models["policy"], HFModel) and models["value"].head == "scalar"
    assert models["policy"].source == path
    capsys.readouterr()
    replies = sample_main(["--checkpoint", str(tmp_path / f"{preference[0]}.pt"), "--prompt", "Review: The plot was",
                           "--device", "cpu", "--num-samples", "2"])
    assert len(replies) == 2
    # a checkpoint of a wrapped model is refused by a run of the project's GPT, in one line
    with pytest.raises(SystemExit) as exc:
        pipeline_main(["--out", out, "--stage", "rm", *TINY])
    assert exc.value.code == 2 and "different vocabulary" in capsys.readouterr().err


def _encoder_folder(path):
    """A BERT encoder saved as a `BertModel`, without a tokenizer (BERT has a causal head, this folder not)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(path)
    return path


def _tokenizer_larger_than_embedding(source, path):
    """A copy of `source` whose tokenizer adds a pad token: one id more than the embedding has rows."""
    from transformers import AutoTokenizer

    shutil.copytree(source, path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(path)
    return path


def test_a_bad_model_folder_stops_in_one_line_with_exit_2(model_dirs, tmp_path, capsys):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(model_dirs["llama"], no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*"))
    larger = _tokenizer_larger_than_embedding(model_dirs["gpt2"], tmp_path / "larger")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # a run already there: nothing of it is touched
    for folder, says in ((tmp_path / "missing", "no such directory"), (tmp_path, "no config.json"),
                         (tmp_path / "vit", "not a causal language model"),
                         (_encoder_folder(tmp_path / "bert"), "holds a BertModel, not a causal language model"),
                         (no_tokenizer, "no tokenizer in the folder"),
                         (larger, "the tokenizer has 321 tokens but the model's input embedding has 320 rows")):
        with pytest.raises(SystemExit) as exc:
            pipeline_main(["--model", str(folder), "--out", str(tmp_path / "run"), "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and says in err[0] and f"--model {folder}" in err[0], err
        assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]
        assert (tmp_path / "run" / "config.json").read_text() == "{}"


def test_sft_refuses_a_tokenizer_larger_than_the_embedding_when_it_loads_the_model(model_dirs, tmp_path):
    # the check at load time, on the loaded weights (without it: IndexError in the first forward)
    larger = _tokenizer_larger_than_embedding(model_dirs["gpt2"], tmp_path / "larger")
    tok = HFTokenizer.load(larger)
    assert tok.vocab_size == 321 and tok.pad_id == 320  # the added pad token, past the embedding's 320 rows
    config = resolve(PipelineConfig(model=str(larger), sft_steps=1, progress=False, device="cpu"))
    with pytest.raises(ValueError, match="321 tokens but the model's input embedding has 320 rows"):
        sft.train_sft(config, TASK, tok, CPU, progress=False)


def test_short_ppo_run_on_a_wrapped_model_raises_the_gold_reward(model_dirs):
    """SFT from random weights, then PPO on the task's gold reward: the mean gold reward of 64
    fixed prompts (temperature 1) rises by at least 0.3 after 12 iterations (seeded; measured −0.64 → 0.00)."""
    path = str(model_dirs["gpt2"])
    tok = HFTokenizer.load(path)
    config = resolve(PipelineConfig(
        model=path, sft_steps=150, sft_batch_size=32, sft_examples=3000, sft_lr=3e-3, ppo_iterations=12,
        rollout_batch_size=32, minibatch_size=16, ppo_lr=3e-4, value_lr=1e-3, ref_kl_controller="fixed",
        ref_kl_coef=0.05, reward_source="gold", eval_prompts=64, progress=False, device="cpu",
    ))
    models, _ = sft.train_sft(config, TASK, tok, CPU, progress=False)
    trained, stats = rlhf.train_ppo(config, TASK, tok, models["model"], None, CPU, progress=False)
    gold = stats["gold_reward"]
    assert gold["final"] > gold["sft"] + 0.3, gold
    assert stats["history"][0]["rlhf/ref_kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is π_ref's
    assert isinstance(trained["policy"], HFModel)
    assert dataclasses.asdict(config)["model"] == path


def test_random_model_command_prints_its_help(capsys):
    from llm.random_model import main as random_model_main

    with pytest.raises(SystemExit) as exc:
        random_model_main(["--help"])
    assert exc.value.code == 0 and "--arch {gpt2,llama}" in capsys.readouterr().out


def test_bench_compares_a_wrapped_model_with_the_gpt_of_its_size(model_dirs, capsys):
    from llm.bench import main as bench_main

    result = bench_main(["--model", str(model_dirs["llama"]), "--devices", "cpu", "--batch-size", "4",
                         "--new-tokens", "4", "--prompt-tokens", "4", "--repeats", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    cpu = result["cpu"]
    assert cpu["gpt"]["params"] > 0 and cpu["wrapped"]["vocab_size"] == 320
    assert cpu["ratio"]["generate_tokens_per_s"] == cpu["wrapped"]["generate_tokens_per_s"] / cpu["gpt"][
        "generate_tokens_per_s"]


def test_an_exported_policy_loads_back_as_a_causal_lm_with_the_same_logits(model_dirs, tmp_path):
    from llm.model_interface import export_pretrained

    model, tok = _loaded(model_dirs, "gpt2")
    with torch.no_grad():
        model.lm.get_input_embeddings().weight.add_(0.5)  # weights of its own, not the source's
    export_pretrained(model, tok, tmp_path / "policy")
    back, back_tok = load_hf_model(tmp_path / "policy"), HFTokenizer.load(tmp_path / "policy")
    ids, mask = encode_prompts(tok, PROMPTS, 96, 4, CPU)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask), model(ids, attention_mask=mask))
    assert back_tok.encode(PROMPTS[0]) == tok.encode(PROMPTS[0])
