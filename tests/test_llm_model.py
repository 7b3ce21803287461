"""Tokenizer, model, KV-cache sampling and checkpoints of the LLM front end."""

from __future__ import annotations

import pytest
import torch

from core.checkpoint import CheckpointError
from core.checks import NonFiniteError
from llm.checkpoints import load_stage, save_stage
from llm.gpt import GPT, GPTConfig, KVCache
from llm.rollout import encode_prompts, generate, pad_sequences, reply_logprobs
from llm.tokenizer import CharTokenizer

TOK = CharTokenizer()
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=40, n_layer=2, n_head=2, n_embd=32)


def tiny_model(seed: int = 0, head: str = "lm", config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config, head=head)
    # larger weights than the default initialisation, so that sampling is far from uniform and
    # the comparisons below would notice a wrong position or mask
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model.eval()


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_specials():
    text = "review: the plot was so great, fun and lovely. 12+35=47"
    ids = TOK.encode(text, bos=True, eos=True)
    assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id
    assert TOK.decode(ids) == text
    assert len({TOK.pad_id, TOK.bos_id, TOK.eos_id}) == 3  # PAD is not EOS
    assert TOK.decode([TOK.stoi["a"], TOK.eos_id, TOK.stoi["b"]]) == "a"
    assert TOK.decode([TOK.stoi["a"], TOK.eos_id, TOK.stoi["b"]], stop_at_eos=False) == "ab"
    assert TOK.decode([TOK.pad_id, TOK.stoi["x"], TOK.pad_id]) == "x"


def test_tokenizer_names_unknown_characters():
    with pytest.raises(ValueError) as err:
        TOK.encode("Great movie ü!")
    assert "'G'" in str(err.value) and "'ü'" in str(err.value)


def test_vocab_mismatch_is_refused():
    other = CharTokenizer(chars="abc ")
    with pytest.raises(ValueError, match="different vocabulary"):
        TOK.check_vocab(other.meta())


# --- model ----------------------------------------------------------------------------------


def test_default_model_has_about_a_million_parameters():
    n = GPT(GPTConfig(vocab_size=TOK.vocab_size)).num_params()
    assert 0.8e6 < n < 1.3e6
    bigger = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_layer=6, n_embd=192)).num_params()
    assert bigger > 2 * n


def test_left_padding_does_not_change_the_computation():
    model = tiny_model()
    ids = torch.tensor([TOK.encode("12+35=", bos=True)])
    plain = model(ids)  # (1, T, V)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones_like(ids)], dim=1)
    out = model(padded, attention_mask=mask)[:, 3:]
    torch.testing.assert_close(out, plain, atol=2e-4, rtol=1e-4)


def test_kv_cache_logits_equal_full_recomputation():
    model = tiny_model()
    ids = torch.randint(3, TOK.vocab_size, (3, 12))
    full = model(ids)  # (B, T, V)
    cache = KVCache(model.config, 3, 12, ids.device)
    first = model(ids[:, :5], cache=cache)
    steps = [model(ids[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 5), (0.0, None)])
def test_kv_cache_sampling_equals_full_recomputation(temperature, top_k):
    model = tiny_model()
    prompts = ["1+2=", "review: the plot was", "ab"]
    ids, mask = encode_prompts(TOK, prompts, TINY.block_size, 12)
    outs, step_logits = [], []
    real_forward = model.forward

    def recording_forward(*args, **kwargs):  # the last-position logits of every cached step
        logits = real_forward(*args, **kwargs)
        if kwargs.get("cache") is not None:
            step_logits.append(logits[:, -1, :].detach())  # (B, V)
        return logits

    model.forward = recording_forward
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(123)
        outs.append(
            generate(
                model,
                ids,
                mask,
                max_new_tokens=12,
                eos_id=TOK.eos_id,
                pad_id=TOK.pad_id,
                temperature=temperature,
                top_k=top_k,
                generator=g,
                use_cache=use_cache,
            )
        )
    cached, full = outs
    assert torch.equal(cached.reply_ids, full.reply_ids)
    assert torch.equal(cached.reply_mask, full.reply_mask)
    # the logits the cached steps sampled from equal those of one full forward pass over the
    # finished sequences (left-padded prompts, right-padded replies): log π of each sampled token
    model.forward = real_forward
    R = cached.reply_ids.shape[1]
    steps = torch.stack(step_logits[:R], dim=1).log_softmax(-1)  # (B, R, V)
    cached_lp = steps.gather(-1, cached.reply_ids[..., None]).squeeze(-1)  # (B, R)
    full_lp, _ = reply_logprobs(model, cached.input_ids, cached.attention_mask, cached.reply_ids)  # (B, R)
    real = cached.reply_mask.bool()
    torch.testing.assert_close(cached_lp[real], full_lp[real], atol=2e-4, rtol=1e-4)


def test_generation_pads_after_eos_and_masks_it():
    model = tiny_model()

    def eos_after_two(module, inputs, output):  # row 0 stops at once, row 1 after two tokens
        out = torch.full_like(output, -30.0)
        out[..., TOK.stoi["z"]] = 30.0
        out[0, ..., TOK.eos_id] = 40.0
        if output.shape[1] == 1 and calls.append(1) is None and len(calls) >= 2:
            out[1, ..., TOK.eos_id] = 40.0
        return out

    calls: list[int] = []
    handle = model.lm_head.register_forward_hook(eos_after_two)
    ids, mask = encode_prompts(TOK, ["ab", "abcd"], TINY.block_size, 6)
    gen = generate(
        model,
        ids,
        mask,
        max_new_tokens=6,
        eos_id=TOK.eos_id,
        pad_id=TOK.pad_id,
        generator=torch.Generator().manual_seed(0),
    )
    handle.remove()
    z = TOK.stoi["z"]
    assert gen.reply_ids.tolist() == [[TOK.eos_id, TOK.pad_id, TOK.pad_id], [z, z, TOK.eos_id]]
    assert gen.reply_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert gen.ended.tolist() == [True, True] and gen.lengths.tolist() == [1, 3]


def test_prompt_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="context"):
        encode_prompts(TOK, ["x" * 35], TINY.block_size, 10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode_prompts(TOK, ["Hello"], TINY.block_size, 10)
    with pytest.raises(ValueError, match="block_size"):
        pad_sequences(TOK, ["x" * 30], ["y" * 20], TINY.block_size)


def test_nan_in_a_model_stops_generation_with_its_name():
    model = tiny_model()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    ids, mask = encode_prompts(TOK, ["1+1="], TINY.block_size, 4)
    with pytest.raises(NonFiniteError, match="policy logits"):
        generate(model, ids, mask, max_new_tokens=4, eos_id=TOK.eos_id, pad_id=TOK.pad_id)


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = tiny_model()
    path = save_stage(tmp_path / "sft.pt", "llm_sft", {"model": model}, TOK, {"seconds": 1.0})
    models, meta = load_stage(path, TOK, kind="llm_sft", expected_config=TINY)
    for a, b in zip(models["model"].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert meta["seconds"] == 1.0
    wider = GPTConfig(**{**TINY.__dict__, "n_embd": 64})
    with pytest.raises(CheckpointError, match="n_embd: 32 vs 64"):
        load_stage(path, TOK, expected_config=wider)
    with pytest.raises(CheckpointError, match="different vocabulary"):
        load_stage(path, CharTokenizer(chars=TOK.chars[:-1]))
    with pytest.raises(CheckpointError, match="kind"):
        load_stage(path, TOK, kind="llm_rm")
