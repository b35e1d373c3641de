"""The critic V_phi(x_t, t, c): shapes, how t and the prompt enter (FiLM), gradients, save/load, embedding."""

from __future__ import annotations

import math

import pytest
import torch

from erasecli.critic.model import Critic, CriticConfig, load_critic, save_critic, sinusoidal_embedding

CFG = CriticConfig(text_dim=16, width=16, blocks=2, t_dim=32)


@pytest.fixture
def critic():
    torch.manual_seed(0)
    return Critic(CFG)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g)  # (B, C, H, W)
    t = torch.tensor([10, 500, 900])
    text = torch.randn(3, CFG.text_dim, generator=g)  # (B, text_dim)
    return x, t, text


def _zero_film(critic: Critic) -> None:
    with torch.no_grad():
        for block in critic.blocks:
            block.film.weight.zero_()
            block.film.bias.zero_()


@pytest.mark.parametrize("size", [8, 16])
def test_output_is_one_value_per_sample(critic, batch, size):
    _, t, text = batch
    x = torch.randn(3, 4, size, size)
    out = critic(x, t, text)
    assert out.shape == (3,)
    assert torch.isfinite(out).all()


def test_float_and_long_timesteps_agree(critic, batch):
    x, t, text = batch
    assert torch.allclose(critic(x, t, text), critic(x, t.float(), text))


def test_timestep_changes_value_through_film(critic, batch):
    x, _, text = batch
    with torch.no_grad():
        early = critic(x, torch.full((3,), 10), text)
        late = critic(x, torch.full((3,), 900), text)
    assert (early - late).abs().max() > 1e-4

    # t and the prompt share one conditioning vector whose only way into the net is FiLM: with FiLM zeroed
    # neither may move the value.
    _zero_film(critic)
    with torch.no_grad():
        early = critic(x, torch.full((3,), 10), text)
        late = critic(x, torch.full((3,), 900), text)
        other_text = critic(x, torch.full((3,), 10), torch.randn_like(text))
    assert torch.allclose(early, late, atol=1e-7)
    assert torch.allclose(early, other_text, atol=1e-7)


def test_prompt_changes_value(critic, batch):
    x, t, text = batch
    with torch.no_grad():
        a = critic(x, t, text)
        b = critic(x, t, torch.randn_like(text))
    assert (a - b).abs().max() > 1e-4


def test_gradients_reach_every_parameter(critic, batch):
    x, t, text = batch
    critic(x, t, text).pow(2).mean().backward()
    for name, p in critic.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_save_load_round_trip(critic, batch, tmp_path):
    x, t, text = batch
    meta = {"base": "tiny", "step": 120, "concept": {"name": "three", "digits": [3]}}
    folder = tmp_path / "critic"
    save_critic(critic, folder, meta)
    # Saving again over an existing folder replaces it and leaves no staging or old folders behind.
    save_critic(critic, folder, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critic"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "critic.safetensors"]

    loaded, meta_back = load_critic(folder)
    assert loaded.cfg == CFG
    assert meta_back == meta
    with torch.no_grad():
        assert torch.equal(critic(x, t, text), loaded(x, t, text))


def test_load_names_the_missing_file(critic, tmp_path):
    save_critic(critic, tmp_path / "c", {})
    (tmp_path / "c" / "critic.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="critic.safetensors"):
        load_critic(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_critic(tmp_path / "nowhere")


def test_config_dict_round_trip():
    assert CriticConfig.from_dict(CFG.to_dict()) == CFG


def test_sinusoidal_embedding_by_hand():
    emb = sinusoidal_embedding(torch.tensor([0, 0]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[:, :4], torch.zeros(2, 4))
    assert torch.equal(emb[:, 4:], torch.ones(2, 4))

    # t = 1, dim 4: frequencies 1 and 10000^(-1/2) = 0.01.
    emb = sinusoidal_embedding(torch.tensor([1.0]), 4)
    expected = torch.tensor([[math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)]])
    assert torch.allclose(emb, expected, atol=1e-6)
