"""Model adapters, tokenizer, registry and the embedded trained models (CPU, offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from parataa import draw_noise
from parataa.models import WeightsNotFoundError
from parataa.models.embedded import CLIP_TOKENIZER, CLIP_TOKENIZER_FILES, DIGIT_WORDS
from parataa.models.stable_diffusion import clip_tokenizer, token_ids
from parataa.solvers import SolverConfig, preset, solve
from tests.helpers import dit_reduction_length, rounding_tol, unet_reduction_length

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------- tokenizer

TOKEN_IDS = Path(__file__).parent / "fixtures" / "clip_token_ids.json"


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def _padded(ids: list[int]) -> list[int]:
    return ids + [49407] * (77 - len(ids))


def test_tokenizer_gives_stable_diffusion_ids(tokenizer):
    ids = token_ids(tokenizer, ["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert bool((ids[0, 7:] == 49407).all())  # SD pads with <|endoftext|>
    assert len(tokenizer) == 49408 == len(tokenizer.get_vocab())
    assert token_ids(tokenizer, [""])[0, :2].tolist() == [49406, 49407]


def test_tokenizer_folder_is_the_clip_bpe_in_the_snapshot_layout():
    """vocab.json: the 256 byte symbols, the same with </w>, one token per merge of merges.txt, the two special
    tokens, in that id order (CLIP's construction)."""
    vocab = json.loads((CLIP_TOKENIZER / "vocab.json").read_text(encoding="utf-8"))
    merges = (CLIP_TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) - 1 == 49408 - 2 * 256 - 2
    by_id = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in by_id] == list(range(49408))
    assert [t + "</w>" for t in by_id[:256]] == by_id[256:512]
    assert by_id[512:-2] == ["".join(m.split()) for m in merges[1:]]
    assert by_id[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert sorted(p.name for p in CLIP_TOKENIZER.iterdir()) == sorted([*CLIP_TOKENIZER_FILES, "NOTICE"])


def test_tokenizer_truncates_to_77_with_eos(tokenizer):
    ids = token_ids(tokenizer, ["word " * 200])[0]
    assert ids.shape == (77,)
    assert ids[0] == 49406 and ids[-1] == 49407 and ids[-2] != 49407


def test_token_ids_are_those_of_the_former_hand_written_tokenizer(tokenizer):
    """Ids recorded from parataa's hand-written tokenizer (tests/fixtures/make_clip_token_ids.py): the training
    prompts, the study configs' prompts and hard strings give the same ids. Where that tokenizer did not clean
    text as transformers does (html entities, Unicode NFC, the final sigma), transformers' ids are the former
    tokenizer's ids of the text transformers reads."""
    fixture = json.loads(TOKEN_IDS.read_text(encoding="utf-8"))
    texts = [e["text"] for e in fixture["unchanged"]]
    assert {f"a handwritten digit {w}" for w in DIGIT_WORDS} <= set(texts)
    got = token_ids(tokenizer, texts).tolist()
    for e, ids in zip(fixture["unchanged"], got, strict=True):
        assert ids == _padded(e["ids"]), e["text"]
    assert any(len(e["ids"]) == 77 for e in fixture["unchanged"])  # a text past 77 tokens, truncated
    for e in fixture["changed"]:
        ids = token_ids(tokenizer, [e["text"]])[0].tolist()
        assert ids == _padded(e["ids"]) != _padded(e["ids_before"]), e["text"]


def test_special_token_text_is_the_special_token(tokenizer):
    """As in Stable Diffusion: <|endoftext|> written in a prompt is the end token, not its characters."""
    ids = token_ids(tokenizer, ["x<|endoftext|>y"])[0].tolist()
    assert ids[:3] == [49406, int(token_ids(tokenizer, ["x"])[0, 1]), 49407]


# ---------------------------------------------------------------- DiT adapter


def _tiny_dit(in_channels=4, out_channels=8, classes=5):
    torch.manual_seed(0)
    m = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=classes,
        norm_type="ada_norm_zero",
    )
    # ada_norm_zero starts the blocks and the output projection at zero; randomise so outputs depend on inputs
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def _inputs(n, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    tau = torch.tensor([999.0, 500.0, 20.0, 0.0][:n], dtype=torch.float64)
    return x, tau


@pytest.mark.parametrize("guided_channels", [3, None])
def test_dit_adapter_matches_hand_written_guidance(guided_channels):
    from parataa.models.dit import DiTDenoiser

    model = _tiny_dit()
    labels = [1, 4, 0]
    den = DiTDenoiser(model, labels, cfg_scale=4.0, guided_channels=guided_channels)
    x, tau = _inputs(4, (4, 4, 4))
    samples = torch.tensor([2, 0, 1, 2])
    out = den(x, tau, samples)
    assert out.dtype == torch.float64 and out.shape == x.shape
    with torch.no_grad():
        y = torch.tensor(labels)[samples]
        xc = x.float()
        eps_c = model(xc, timestep=tau.long(), class_labels=y).sample[:, :4].double()  # learned sigma dropped
        eps_u = model(xc, timestep=tau.long(), class_labels=torch.full_like(y, 5)).sample[:, :4].double()
    want = eps_c.clone()
    g = 3 if guided_channels == 3 else 4
    want[:, :g] = eps_u[:, :g] + 4.0 * (eps_c[:, :g] - eps_u[:, :g])
    # one batch of 2B rows against two of B: rounding only, amplified by the guidance combination (1 + 2 s)
    tol = (1 + 2 * 4.0) * rounding_tol(torch.float32, dit_reduction_length(model), scale=float(want.abs().max()))
    torch.testing.assert_close(out, want, rtol=0, atol=tol)
    if guided_channels == 3:  # the 4th channel is the conditional prediction, not guided
        assert not torch.allclose(out[:, 3], (eps_u + 4.0 * (eps_c - eps_u))[:, 3], atol=1e-4)


def test_dit_adapter_chunking_and_no_guidance():
    from parataa.models.dit import DiTDenoiser

    model = _tiny_dit()
    x, tau = _inputs(4, (4, 4, 4))
    samples = torch.tensor([0, 1, 0, 1])
    whole = DiTDenoiser(model, [2, 3], cfg_scale=3.0)(x, tau, samples)
    chunked = DiTDenoiser(model, [2, 3], cfg_scale=3.0, chunk_size=2)  # 1 state (2 rows) per call
    # float32 kernels are not batch-invariant: chunks of 2 rows and one call of 8 differ by rounding only
    tol = (1 + 2 * 3.0) * rounding_tol(torch.float32, dit_reduction_length(model), scale=float(whole.abs().max()))
    torch.testing.assert_close(chunked(x, tau, samples), whole, rtol=0, atol=tol)
    plain = DiTDenoiser(model, [2, 3], cfg_scale=1.0)(x, tau, samples)
    with torch.no_grad():
        want = model(x.float(), timestep=tau.long(), class_labels=torch.tensor([2, 3, 2, 3])).sample[:, :4]
    tol = rounding_tol(torch.float32, dit_reduction_length(model), scale=float(want.abs().max()))
    torch.testing.assert_close(plain, want.double(), rtol=0, atol=tol)


def test_dit_adapter_rejects_bad_input():
    from parataa.models.dit import DiTDenoiser

    model = _tiny_dit()
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 5\)"):
        DiTDenoiser(model, [5])
    with pytest.raises(ValueError, match="chunk_size"):
        DiTDenoiser(model, [1], chunk_size=0)
    den = DiTDenoiser(model, [1])
    with pytest.raises(ValueError, match="x must have shape"):
        den(torch.zeros(1, 3, 4, 4, dtype=torch.float64), torch.zeros(1), torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------- Stable Diffusion adapter


def _tiny_sd():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=4,
    ).eval()
    with torch.no_grad():  # zero-initialised output layers: randomise so the test sees the network
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    te = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    ).eval()
    return unet, te


def test_sd_adapter_matches_hand_written_guidance(tokenizer):
    from parataa.models.embedded import SD_V1_5_SCHEDULER
    from parataa.models.stable_diffusion import StableDiffusionDenoiser

    unet, te = _tiny_sd()
    prompts = ["a photo of a cat", "a handwritten digit seven"]
    den = StableDiffusionDenoiser(unet, te, prompts, scheduler_config=SD_V1_5_SCHEDULER, cfg_scale=7.5, chunk_size=2)
    assert den.sample_shape == (2, 8, 8)
    x, tau = _inputs(3, (2, 8, 8))
    samples = torch.tensor([1, 0, 1])
    out = den(x, tau[:3], samples)
    with torch.no_grad():
        cond = te(token_ids(tokenizer, [prompts[i] for i in samples.tolist()]))[0]
        uncond = te(token_ids(tokenizer, [""] * 3))[0]
        eps_c = unet(x.float(), tau[:3].long(), encoder_hidden_states=cond).sample.double()
        eps_u = unet(x.float(), tau[:3].long(), encoder_hidden_states=uncond).sample.double()
    want = eps_u + 7.5 * (eps_c - eps_u)
    reduction = unet_reduction_length(unet, te.config.hidden_size)
    tol = (1 + 2 * 7.5) * rounding_tol(torch.float32, reduction, scale=float(torch.cat([eps_c, eps_u]).abs().max()))
    torch.testing.assert_close(out, want, rtol=0, atol=tol)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)  # the prompt matters


def test_sd_adapter_rejects_bad_prompts():
    from parataa.models.embedded import SD_V1_5_SCHEDULER
    from parataa.models.stable_diffusion import StableDiffusionDenoiser

    unet, te = _tiny_sd()
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        StableDiffusionDenoiser(unet, te, [3], scheduler_config=SD_V1_5_SCHEDULER)


# ---------------------------------------------------------------- missing weights


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


@pytest.mark.parametrize(
    "name, repo, cond",
    [
        ("dit-xl-2-256", "facebook/DiT-XL-2-256", 207),
        ("sd-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "a cat"),
    ],
)
def test_missing_weights_error_says_what_where_and_how(offline_empty_cache, name, repo, cond):
    from parataa.models.registry import build_denoiser

    with pytest.raises(WeightsNotFoundError) as e:
        build_denoiser(name, [cond])
    msg = str(e.value)
    assert repo in msg
    assert str(offline_empty_cache / "hf" / "hub") in msg  # where it looked
    assert "HF_HUB_OFFLINE" in msg
    assert f"hf download {repo} --local-dir DIR" in msg and "--model-path DIR" in msg
    assert isinstance(e.value, ValueError)  # the CLI prints it as one clear line


def test_local_path_without_component_is_named(tmp_path):
    from parataa.models.registry import build_denoiser

    (tmp_path / "snap").mkdir()
    with pytest.raises(WeightsNotFoundError, match="has no 'transformer' folder"):
        build_denoiser("dit-xl-2-256", [1], path=tmp_path / "snap")


# ---------------------------------------------------------------- registry


def test_registry_rejects_unknown_names_and_bad_conditions():
    from parataa.models.registry import build_denoiser, is_class_conditional

    with pytest.raises(ValueError, match="did you mean 'tiny-dit'"):
        build_denoiser("tiny-dt", [1])
    with pytest.raises(ValueError, match=r"class labels in \[0, 10\)"):
        build_denoiser("tiny-dit", [10])
    with pytest.raises(ValueError, match="class labels"):
        build_denoiser("tiny-dit", ["a cat"])
    with pytest.raises(ValueError, match="takes no path"):
        build_denoiser("gmm", [1], path="x")
    assert is_class_conditional("dit-xl-2-256") and not is_class_conditional("sd-v1-5")


def test_registry_static_shapes_match_built_models(tiny_dit):
    from parataa.models.registry import build_denoiser, sample_shape

    assert sample_shape("tiny-dit") == tiny_dit[1]["sample_shape"] == tiny_dit[0].sample_shape
    assert sample_shape("tiny-sd") == build_denoiser("tiny-sd", [1])[1]["sample_shape"]
    assert sample_shape("gmm") == build_denoiser("gmm", [1])[1]["sample_shape"]
    assert tiny_dit[1]["image"] and not build_denoiser("gmm", [1])[1]["image"]


def test_registry_gmm_spec_builds_its_schedule():
    from parataa.models.registry import build_denoiser
    from parataa.schedules import from_diffusers_config

    den, spec = build_denoiser("gmm", [0, 3], cfg_scale=2.0)
    assert spec["sample_shape"] == (64,) and spec.get("schedule") == "diffusers"
    s = spec(10, sampler="ddpm")
    torch.testing.assert_close(s.b, from_diffusers_config(spec["scheduler_config"], 10, sampler="ddpm").b)


# ---------------------------------------------------------------- embedded models


@pytest.fixture(scope="module")
def tiny_dit():
    from parataa.models.registry import build_denoiser

    return build_denoiser("tiny-dit", list(range(10)), cfg_scale=5.0)


def test_embedded_checkpoints_load_offline(tiny_dit, offline_empty_cache):
    from parataa.models.embedded import embedded_path, load_classifier, read_meta
    from parataa.models.registry import build_denoiser
    from parataa.schedules import dit_schedule

    den, spec = tiny_dit
    assert spec["sample_shape"] == (1, 16, 16) and spec["schedule"] == "dit"
    torch.testing.assert_close(spec(20).a, dit_schedule(20).a)
    assert sum(p.numel() for p in den.transformer.parameters()) < 1_500_000
    sd, sd_spec = build_denoiser("tiny-sd", [7, "a handwritten digit three"])
    assert sd.prompts == ["a handwritten digit seven", "a handwritten digit three"]
    assert sd_spec["scheduler_config"]["beta_schedule"] == "scaled_linear" and sd.vae is None
    for name in ("tiny-dit", "tiny-sd", "digit-classifier"):
        meta = read_meta(embedded_path(name))
        assert meta["name"] == name and meta["training"]["steps"] > 0
    ev = json.loads((embedded_path("tiny-dit") / "evaluation.json").read_text())
    assert ev["samples"] == 1000 and ev["accuracy"] >= 0.9 and ev["sampler"] == "dit-ddim-100"
    clf = load_classifier()
    assert clf(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_tiny_dit_samples_are_the_requested_digits(tiny_dit):
    """A short DDIM run of the shipped model gives digits the shipped classifier recognises."""
    from parataa.models.embedded import load_classifier

    den, spec = tiny_dit
    noise = draw_noise(list(range(10)), 20, spec["sample_shape"])
    res = solve(den, spec(20), noise, preset("sequential"))
    img = den.decode(res.x0)
    assert img.shape == (10, 1, 16, 16) and float(img.min()) >= 0 and float(img.max()) <= 1
    with torch.no_grad():
        pred = load_classifier()(img * 2 - 1).argmax(1)
    assert int((pred == torch.arange(10)).sum()) >= 8, pred.tolist()


@pytest.mark.parametrize("method", ["taa", "fp+"])
def test_parallel_equals_sequential_on_tiny_dit(tiny_dit, method):
    """With a tight stopping rule the parallel trajectory is the sequential one, in fewer than T iterations."""
    den, spec = tiny_dit
    T = 25
    noise = draw_noise([0, 1], T, spec["sample_shape"])
    sched = spec(T)
    ref = solve(den, sched, noise, preset("sequential"))
    res = solve(den, sched, noise, preset(method, abs_tol=1e-5, rel_tol=0.0, tol_scale="one"))
    assert bool(res.finished.all())
    assert int(res.iterations.max()) < T  # measured 19 (TAA) and 21 (FP+) on CPU
    err = float((res.trajectory - ref.trajectory).abs().max())
    assert err < 1e-3, err  # measured below 1e-4


def test_parallel_equals_sequential_on_tiny_sd():
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser("tiny-sd", [2, 5], cfg_scale=5.0)
    T = 10
    noise = draw_noise([3, 4], T, spec["sample_shape"])
    sched = spec(T)
    ref = solve(den, sched, noise, preset("sequential"))
    res = solve(den, sched, noise, SolverConfig(method="taa", order=None, abs_tol=1e-5, rel_tol=0.0, tol_scale="one"))
    assert bool(res.finished.all())
    assert float((res.x0 - ref.x0).abs().max()) < 1e-3


def test_train_smoke_writes_loadable_model(tmp_path):
    pytest.importorskip("mlxtend")
    from parataa.models.registry import build_denoiser
    from parataa.train import main

    out = tmp_path / "tiny-dit"
    main(
        [
            "--model",
            "tiny-dit",
            "--out",
            str(out),
            "--minutes",
            "1",
            "--max-steps",
            "2",
            "--batch",
            "8",
            "--device",
            "cpu",
        ]
    )
    stats = json.loads((out / "training_stats.json").read_text())
    assert stats["steps"] == 2 and stats["train_images"] == 5000
    den, _ = build_denoiser("tiny-dit", [3], path=out)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    assert torch.isfinite(den(x, torch.tensor([10.0]), torch.tensor([0]))).all()


# ---------------------------------------------------------------- real weights / GPU


@pytest.mark.weights
@pytest.mark.skipif(not os.environ.get("PARATAA_DIT_PATH"), reason="set PARATAA_DIT_PATH to a DiT-XL-2-256 snapshot")
def test_dit_xl_real_weights_load():
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser("dit-xl-2-256", [207], path=Path(os.environ["PARATAA_DIT_PATH"]))
    assert spec["sample_shape"] == (4, 32, 32) and den.guided_channels == 3
    out = den(torch.randn(1, 4, 32, 32, dtype=torch.float64), torch.tensor([500.0]), torch.tensor([0]))
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()


@pytest.mark.weights
@pytest.mark.skipif(not os.environ.get("PARATAA_SD_PATH"), reason="set PARATAA_SD_PATH to an SD v1.5 snapshot")
def test_sd_v1_5_real_weights_load():
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser("sd-v1-5", ["a photo of a cat"], path=Path(os.environ["PARATAA_SD_PATH"]))
    assert spec["sample_shape"] == (4, 64, 64) and den.vae is not None


@pytest.mark.gpu
def test_adapter_on_gpu_matches_cpu(tiny_dit):
    from parataa.models.registry import build_denoiser

    den, _ = tiny_dit
    gpu, _ = build_denoiser("tiny-dit", list(range(10)), cfg_scale=5.0, device="cuda")
    x, tau = torch.randn(4, 1, 16, 16, dtype=torch.float64), torch.tensor([900.0, 400.0, 50.0, 1.0])
    s = torch.tensor([0, 3, 5, 9])
    want = den(x, tau, s)
    # other kernels, other reduction order: float32 rounding along the network, times the guidance (1 + 2 s)
    tol = (1 + 2 * 5.0) * rounding_tol(torch.float32, dit_reduction_length(den.transformer), float(want.abs().max()))
    torch.testing.assert_close(gpu(x.cuda(), tau.cuda(), s.cuda()).cpu(), want, rtol=0, atol=tol)


# ---------------------------------------------------------------- parataa sample


def test_sample_cli_writes_image_log_and_summary(tmp_path):
    import pandas as pd

    from parataa.cli import main

    out = tmp_path / "s"
    rc = main(
        ["sample", "--model", "tiny-dit", "--class", "4", "--solver", "taa", "--steps", "8", "--seed", "3"]
        + ["--out", str(out), "--no-progress", "--chunk-size", "6"]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["condition"] == 4 and summary["config"]["method"] == "taa" and summary["result"]["finished"]
    log = pd.read_parquet(out / summary["files"]["convergence"])
    assert set(log["step"]) == set(range(8)) and log["iteration"].max() + 1 == summary["result"]["iterations_max"]
    assert len(pd.read_parquet(out / summary["files"]["timings"])) == summary["result"]["iterations_max"]
    from PIL import Image

    assert Image.open(out / "sample.png").size == (256, 256)
    # same seed, sequential: the parallel sample is the sequential one up to the stopping tolerance
    main(
        ["sample", "--model", "tiny-dit", "--class", "4", "--solver", "sequential", "--steps", "8", "--seed", "3"]
        + ["--out", str(tmp_path / "q"), "--no-progress"]
    )
    x_par, x_seq = torch.load(out / "x0.pt"), torch.load(tmp_path / "q" / "x0.pt")
    assert float((x_par - x_seq).abs().max()) < 0.05


def test_sample_cli_rejects_mismatched_condition(tmp_path, capsys):
    from parataa.cli import main

    assert main(["sample", "--model", "tiny-dit", "--prompt", "a cat", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "class-conditional; pass --class N" in capsys.readouterr().err


def test_prompt_length_counts_html_entities_as_transformers_reads_them():
    """transformers keeps `&amp;` as text (3 tokens): a prompt of 30 of them is 90 tokens, refused, although
    its unescaped text would be 30 bytes."""
    from parataa.conditions import check_condition, prompt_tokens

    prompt = "&amp; " * 30
    assert prompt_tokens(prompt) == 90
    assert "90 CLIP tokens" in check_condition("sd-v1-5", prompt)
