"""The vision-language family's pieces against independent computations: FairCLIP's text cut,
the CLIP tower run from embeddings, the zero-shot score against transformers' own CLIPModel, the
per-pair loss against CLIPModel's loss, the Sinkhorn term against geomloss called directly, and
DBPM's judgement and weights against a hand-worked memory (scipy's normal density)."""
import numpy as np
import pytest
import torch
from scipy.stats import norm

from trainer.config import make_config
from trainer.methods import create_method
from trainer.methods.dualfairvl import orthogonality
from trainer.methods.vl import pair_losses, similarity_scores, sinkhorn_term
from trainer.models.clip import (CLIP_MEAN, CLIP_STD, PROMPTS, cut_note, load_clip,
                                 load_clip_tokenizer, tokenized)
from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainer.models import create_model


def _cfg(mode="clip", **kw):
    return make_config("fairvlmed", "gender", preset="tiny", mode=mode, **kw)


def test_cut_note_on_a_word_boundary():
    text = "word " * 50                                     # 250 characters
    cut = cut_note(text)
    assert len(cut) <= 180 and cut.endswith("word") and len(cut) == 179   # 36 words: 36*5-1
    assert cut_note("short  note ") == "short note"
    assert cut_note("x" * 200) == "x" * 180                # one long word: cut inside it
    tok = load_clip_tokenizer("tiny_clip")
    ids = tok(["a " + "glaucoma " * 100], padding="max_length", truncation=True, max_length=77,
              return_tensors="np")["input_ids"]
    assert ids.shape == (1, 77)
    assert tok.name_or_path.endswith("+cut180")             # cut and uncut caches stay apart


def _clip_of(model):
    """transformers' CLIPModel holding the dual encoder's weights (renamed keys)."""
    clip = load_clip("tiny_clip", False, 32)
    rename = {"encoders.slo.": "", "encoders.note.": ""}
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("prompt_"):
            continue
        for a, b in rename.items():
            k = k.replace(a, b)
        state[k] = v
    clip.load_state_dict(state)
    return clip.eval()


def test_zero_shot_probability_is_clips_softmax_over_the_two_prompts():
    torch.manual_seed(0)
    model = create_model("clip", _cfg()).eval()
    clip = _clip_of(model)
    imagenet = torch.randn(5, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    cmean, cstd = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    pixels = (imagenet * std + mean - cmean) / cstd
    prompts = tokenized(load_clip_tokenizer("tiny_clip"), PROMPTS)
    with torch.no_grad():
        expected = clip(pixel_values=pixels, **prompts).logits_per_image.softmax(-1)[:, 1]
        ours = model({"slo": imagenet}).sigmoid()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_pair_losses_average_to_clips_contrastive_loss():
    torch.manual_seed(1)
    model = create_model("clip", _cfg()).eval()
    clip = _clip_of(model)
    ids = torch.randint(5, 200, (6, 77))
    ids[:, 20] = load_clip_tokenizer("tiny_clip").tokenizer.sep_token_id   # end of text at 20
    mask = torch.ones_like(ids)
    imagenet = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode({"slo": imagenet, "note": {"input_ids": ids, "attention_mask": mask}})
        ours = pair_losses(model.similarity(feats["slo"], feats["note"]))
        cmean, cstd = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        out = clip(pixel_values=(imagenet * std + mean - cmean) / cstd, input_ids=ids,
                   attention_mask=mask, return_loss=True)
    torch.testing.assert_close(ours.mean(), out.loss, rtol=1e-5, atol=1e-6)


def test_text_tower_from_embeddings_equals_the_text_model():
    torch.manual_seed(2)
    text = create_model("clip", _cfg()).encoders["note"].eval()
    tok = load_clip_tokenizer("tiny_clip")
    note = tokenized(tok, ["iop 24 mmhg, cdr 0.7", "normal exam"])
    with torch.no_grad():
        embeds = text.text_model.embeddings.token_embedding(note["input_ids"])
        torch.testing.assert_close(text.from_embeddings(embeds, note["input_ids"],
                                                        note["attention_mask"]), text(note))


@pytest.mark.parametrize("variant", ["official", "aligned"])
def test_sinkhorn_term_equals_geomloss_called_directly(variant):
    from geomloss import SamplesLoss

    g = torch.Generator().manual_seed(3)
    batch, group = torch.randn(8, 8, generator=g) * 5, torch.randn(6, 6, generator=g) * 5
    if variant == "official":          # diag(L_I L_T^T) with L_T = L_I^T: sum_j L_ij L_ji
        d_b = torch.einsum("ij,ji->i", batch, batch)
        d_g = torch.einsum("ij,ji->i", group, group)
        d_g = d_g / d_g.sum()
        loss = SamplesLoss(loss="sinkhorn", p=2, blur=1e-4)
    else:
        d_b, d_g = batch.diagonal(), group.diagonal()
        loss = SamplesLoss(loss="sinkhorn", p=2, blur=1e-4, scaling=0.95)
    expected = loss(d_b[:, None], d_g[:, None])
    ours = sinkhorn_term(similarity_scores(batch, variant, normalise=False),
                         similarity_scores(group, variant, normalise=True), 1e-4, variant)
    torch.testing.assert_close(ours, expected)
    assert ours.item() > 0


def test_dbpm_flags_and_weights_a_hand_made_memory():
    cfg = _cfg("fairclip_dbpm", epochs=3, dbpm_beta_np=1.5, dbpm_beta_fp=1.5,
               dbpm_warmup_epochs=1)
    method = create_method(cfg, ("slo", "note"), 2)
    n = 20
    method.memory = torch.full((n, 3), float("nan"))
    method.kind, method.flagged_at = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    method.last_weight = torch.ones(n)
    losses = np.full(n, 2.0); losses[:8] += np.linspace(-0.2, 0.2, 8)
    losses[17], losses[18], losses[19] = 0.1, 6.0, 7.0      # one noisy, two faulty
    method.memory[:, 0] = torch.tensor(losses, dtype=torch.float32)
    method.begin_epoch(None, 1)
    mu, sigma = losses.mean(), losses.std(ddof=1)
    expect = np.where(losses < mu - 1.5 * sigma, 1, np.where(losses > mu + 1.5 * sigma, 2, 0))
    assert method.kind.tolist() == expect.tolist() and expect[17] == 1 and expect[18:].tolist() == [2, 2]
    assert method.flagged_at[18].item() == 2 and method.flagged_at[0].item() == 0
    torch.testing.assert_close(method.stats, torch.tensor([mu, sigma], dtype=torch.float32))
    method.index = torch.tensor([0, 18, 19])
    step_losses = torch.tensor([2.5, 6.5, 1.0])
    w = method.pair_weights(step_losses, None)
    pdf = norm.pdf(step_losses.numpy(), mu, sigma) * sigma * np.sqrt(2 * np.pi)  # peak 1
    torch.testing.assert_close(w, torch.tensor([1.0, pdf[1], pdf[2]], dtype=torch.float32))
    assert method.memory[18, 1].item() == pytest.approx(6.5)    # this epoch's column


def test_orthogonality_penalty_is_the_mean_squared_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    cos = np.array([[1, 1 / np.sqrt(2), 0], [0, 1 / np.sqrt(2), -1]])
    assert orthogonality(a, b).item() == pytest.approx((cos ** 2).mean())
