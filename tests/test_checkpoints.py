"""The paper's models through the real loaders, on tiny synthetic checkpoints with the published layout and configs:
through a weights path, and by hub id from an offline Hugging Face cache (CPU, no skips)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

from parataa import draw_noise
from parataa.manifest import sha256_file
from parataa.models import WeightsNotFoundError
from parataa.models._common import cached_snapshot, looks_like_path
from parataa.models.embedded import CLIP_TOKENIZER, CLIP_TOKENIZER_FILES
from parataa.models.registry import build_denoiser
from parataa.models.synthetic import CHECKPOINTS, CONFIGS, MARKER, main, tiny_config, write_hub_cache, write_synthetic
from parataa.models.weights import WEIGHT_NAMES, _sha256, weight_files, weights_identity
from parataa.solvers import preset, solve
from tests.helpers import dit_reduction_length, rounding_tol, step_loop_tol, unet_reduction_length

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

DIT, SD = "facebook/DiT-XL-2-256", "stable-diffusion-v1-5/stable-diffusion-v1-5"

# sizes of the files as the Hub lists them (see parataa/assets/configs/README.md)
PUBLISHED_SIZES = {
    "dit-xl-2-256/transformer/config.json": 602,
    "dit-xl-2-256/vae/config.json": 601,
    "dit-xl-2-256/scheduler/scheduler_config.json": 310,
    "sd-v1-5/model_index.json": 541,
    "sd-v1-5/unet/config.json": 743,
    "sd-v1-5/vae/config.json": 547,
    "sd-v1-5/text_encoder/config.json": 617,
    "sd-v1-5/scheduler/scheduler_config.json": 308,
    "sd-v1-5/feature_extractor/preprocessor_config.json": 342,
}
# SD v1.5's tokenizer/ files, shipped once as the embedded tiny-sd's tokenizer (parataa/models/embedded.py)
PUBLISHED_TOKENIZER_SIZES = {
    "special_tokens_map.json": 472,
    "tokenizer_config.json": 806,
    "vocab.json": 1_059_962,
    "merges.txt": 524_619,
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny synthetic DiT and SD checkpoints, as folders and in a hub cache (by their published hub ids)."""
    root = tmp_path_factory.mktemp("ckpt")
    dit = write_synthetic("dit-xl-2-256", root / "dit", size="tiny", seed=3)
    sd = write_synthetic("sd-v1-5", root / "sd", size="tiny", seed=4)
    cache = root / "hub"
    snaps = {DIT: write_hub_cache(dit, cache, DIT), SD: write_hub_cache(sd, cache, SD)}
    return {"dit": dit, "sd": sd, "cache": cache, "snapshots": snaps}


@pytest.fixture
def offline_cache(ckpts, monkeypatch):
    """The hub cache as a cluster user has it: HF_HUB_CACHE pointing at it, HF_HUB_OFFLINE set; the Hub must not
    be asked (asking it fails the test)."""
    import huggingface_hub
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_CACHE", str(ckpts["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(ckpts["cache"]))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", _hub_must_not_be_asked)
    return ckpts["cache"]


def _hub_must_not_be_asked(*args, **kwargs):
    raise AssertionError("the Hub was asked although the weights are local or HF_HUB_OFFLINE is set")


# ---------------------------------------------------------------- the published configs and the layout


def test_published_configs_have_the_published_sizes():
    for rel, size in PUBLISHED_SIZES.items():
        assert (CONFIGS / rel).stat().st_size == size, rel
        json.loads((CONFIGS / rel).read_text())
    for name, size in PUBLISHED_TOKENIZER_SIZES.items():
        assert (CLIP_TOKENIZER / name).stat().st_size == size, name
    dit = json.loads((CONFIGS / "dit-xl-2-256/transformer/config.json").read_text())
    assert (dit["num_layers"], dit["num_attention_heads"] * dit["attention_head_dim"], dit["out_channels"]) == (
        28,
        1152,
        8,
    )  # DiT-XL/2, learned sigma
    unet = json.loads((CONFIGS / "sd-v1-5/unet/config.json").read_text())
    assert unet["cross_attention_dim"] == 768 and unet["block_out_channels"] == [320, 640, 1280, 1280]


@pytest.mark.parametrize("model", sorted(CHECKPOINTS))
def test_tiny_checkpoint_has_the_published_layout_and_keys(ckpts, model):
    path = ckpts["dit" if model == "dit-xl-2-256" else "sd"]
    spec = CHECKPOINTS[model]
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    weights = {c.folder: f"{c.folder}/{WEIGHT_NAMES[c.library][0]}" for c in spec.components}
    want = set(spec.files) | set(weights.values()) | {MARKER}
    if model == "sd-v1-5":  # the tokenizer the embedded tiny-sd ships, byte for byte
        want |= {f"tokenizer/{name}" for name in CLIP_TOKENIZER_FILES}
        for name in CLIP_TOKENIZER_FILES:
            assert (path / "tokenizer" / name).read_bytes() == (CLIP_TOKENIZER / name).read_bytes(), name
    assert files == want
    for rel in spec.files:  # same keys as published; only the dimension values of the configs differ
        published = json.loads((CONFIGS / model / rel).read_text())
        tiny = json.loads((path / rel).read_text())
        assert list(tiny) == list(published), rel
    for comp in spec.components:
        written = json.loads((path / comp.folder / "config.json").read_text())
        assert written == tiny_config(model, comp.folder)
        from safetensors import safe_open

        with safe_open(str(path / weights[comp.folder]), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert "F16" in dtypes and not {"F32", "BF16"} & dtypes
    marker = json.loads((path / MARKER).read_text())
    assert marker["synthetic"] is True and marker["model"] == model and marker["size"] == "tiny"
    assert marker["published_repo"] == spec.repo_id and marker["seed"] in (3, 4)


def test_synthetic_weights_are_reproducible_from_the_seed(ckpts, tmp_path):
    again = write_synthetic("dit-xl-2-256", tmp_path / "again", size="tiny", seed=3)
    other = write_synthetic("dit-xl-2-256", tmp_path / "other", size="tiny", seed=5)
    rel = "transformer/diffusion_pytorch_model.safetensors"
    assert sha256_file(again / rel) == sha256_file(ckpts["dit"] / rel)
    assert sha256_file(other / rel) != sha256_file(ckpts["dit"] / rel)


def test_synthetic_cli_writes_refuses_and_replaces(tmp_path, capsys):
    out = tmp_path / "dit"
    assert main(["--model", "dit-xl-2-256", "--size", "tiny", "--out", str(out), "--seed", "1"]) == 0
    assert json.loads((out / MARKER).read_text())["seed"] == 1
    assert main(["--model", "dit-xl-2-256", "--out", str(out)]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert main(["--model", "dit-xl-2-256", "--out", str(out), "--seed", "2", "--force"]) == 0
    assert json.loads((out / MARKER).read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["dit"]  # no temporary folder left behind
    cache = tmp_path / "hub"
    assert main(["--model", "dit-xl-2-256", "--hub-cache", str(cache)]) == 0
    snap, rev = cached_snapshot(DIT, cache)
    assert (snap / MARKER).is_file() and (snap / "transformer" / "config.json").is_symlink()
    with pytest.raises(FileExistsError, match="not re-pointing refs/main"):  # never shadow another snapshot
        write_hub_cache(out, cache, DIT)


def test_hub_cache_layout_is_what_huggingface_hub_reads(ckpts, offline_cache):
    from huggingface_hub import snapshot_download

    snap, rev = cached_snapshot(DIT, offline_cache)
    assert snap == ckpts["snapshots"][DIT] and len(rev) == 40
    assert Path(snapshot_download(DIT, cache_dir=str(offline_cache), local_files_only=True)) == snap
    blob = (snap / "transformer" / "diffusion_pytorch_model.safetensors").resolve()
    assert blob.parent.name == "blobs" and blob.name == sha256_file(blob)


# ---------------------------------------------------------------- DiT


def _dit_reference(transformer, x, tau, labels, scale, guided=3):
    """DiT's forward_with_cfg written out: one batch for both halves, learned sigma dropped, guidance on the first
    `guided` channels, the conditional prediction on the rest."""
    with torch.no_grad():
        n = x.shape[0]
        out = transformer(
            torch.cat([x, x]).float(),
            timestep=torch.cat([tau, tau]).long(),
            class_labels=torch.cat([labels, torch.full_like(labels, 1000)]),
        ).sample[:, :4]
    c, u = out[:n].double(), out[n:].double()
    want = c.clone()
    want[:, :guided] = u[:, :guided] + scale * (c[:, :guided] - u[:, :guided])
    return want, c, u


@pytest.mark.parametrize("where", ["path", "hub"])
def test_dit_from_tiny_checkpoint_guides_3_of_4_channels_and_decodes(ckpts, offline_cache, where):
    path = ckpts["dit"] if where == "path" else None
    den, spec = build_denoiser("dit-xl-2-256", [3, 207, 999], cfg_scale=4.0, path=path)
    assert spec["sample_shape"] == (4, 8, 8) and spec["schedule"] == "dit" and den.guided_channels == 3
    if where == "hub":
        snap, rev = cached_snapshot(DIT, offline_cache)
        assert spec["weights"] == {"kind": "hub", "given": DIT, "repo_id": DIT, "revision": rev, "snapshot": str(snap)}
    else:
        assert spec["weights"] == {"kind": "path", "given": str(path), "path": str(path.resolve())}
    transformer = diffusers.DiTTransformer2DModel.from_pretrained(
        str(ckpts["dit"]), subfolder="transformer", low_cpu_mem_usage=False
    ).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    tau = torch.tensor([999.0, 480.0, 3.0], dtype=torch.float64)
    samples = torch.tensor([2, 0, 1])
    out = den(x, tau, samples)
    want, c, u = _dit_reference(transformer, x, tau, torch.tensor([999, 3, 207]), 4.0)
    tol = (1 + 2 * 4.0) * rounding_tol(torch.float32, dit_reduction_length(transformer), float(want.abs().max()))
    torch.testing.assert_close(out, want, rtol=0, atol=tol)
    guided_all = u + 4.0 * (c - u)
    assert float((out[:, 3] - guided_all[:, 3]).abs().max()) > 100 * tol  # channel 4 is not guided
    assert float((out[:, 3] - c[:, 3]).abs().max()) <= tol  # it is the conditional prediction
    vae = diffusers.AutoencoderKL.from_pretrained(str(ckpts["dit"]), subfolder="vae", low_cpu_mem_usage=False).eval()
    img = den.decode(x)
    with torch.no_grad():
        ref = ((vae.decode(x.float() / 0.18215).sample + 1) / 2).clamp(0, 1)
    assert img.shape == (3, 3, 64, 64)  # the VAE upsamples 8x, as DiT's 32 -> 256
    torch.testing.assert_close(img, ref, rtol=0, atol=0)  # the same VAE call on the same input


def test_dit_sampling_through_the_cli_writes_a_png(ckpts, tmp_path):
    from PIL import Image

    from parataa.cli import main as cli

    out = tmp_path / "dit"
    rc = cli(
        ["sample", "--model", "dit-xl-2-256", "--model-path", str(ckpts["dit"]), "--class", "207", "--steps", "5"]
        + ["--solver", "taa", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_source"] == str(ckpts["dit"]) and summary["result"]["finished"]
    assert Image.open(out / "sample.png").size == (256, 256)  # 64 px scaled by 4


# ---------------------------------------------------------------- Stable Diffusion


def _pipeline(path):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("where", ["path", "hub"])
def test_sd_guided_eps_equals_the_pipelines(ckpts, offline_cache, where):
    """The adapter's guided eps is what StableDiffusionPipeline's loop computes for the same latents, timestep and
    prompt: the pipeline's own tokenizer (the snapshot's vocab.json/merges.txt), text encoder, UNet and guidance."""
    prompts = ["a photograph of an astronaut riding a horse", "black duck"]
    path = ckpts["sd"] if where == "path" else None
    den, spec = build_denoiser("sd-v1-5", prompts, cfg_scale=7.5, path=path)
    assert spec["sample_shape"] == (4, 8, 8) and den.vae is not None and spec["weights"]["kind"] == where
    assert spec["scheduler_config"]["set_alpha_to_one"] is False and spec["scheduler_config"]["steps_offset"] == 1
    pipe = _pipeline(ckpts["sd"] if where == "path" else spec["weights"]["snapshot"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    t = 481
    ours = den(x, torch.full((2,), float(t)), torch.tensor([0, 1]))
    with torch.no_grad():  # the body of StableDiffusionPipeline.__call__'s denoising loop
        cond, uncond = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True, None)
        latent_in = pipe.scheduler.scale_model_input(torch.cat([x.float()] * 2), t)
        noise_pred = pipe.unet(latent_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_u, eps_c = noise_pred.chunk(2)
        want = (eps_u + 7.5 * (eps_c - eps_u)).double()
    reduction = unet_reduction_length(pipe.unet, pipe.text_encoder.config.hidden_size)
    tol = (1 + 2 * 7.5) * rounding_tol(torch.float32, reduction, float(torch.cat([eps_c, eps_u]).abs().max()))
    torch.testing.assert_close(ours, want, rtol=0, atol=tol)
    assert float((ours - eps_c.double()).abs().max()) > 10 * tol  # the prompt reaches the UNet: guidance acts


def test_sd_ddim_sample_equals_the_pipelines(ckpts):
    """A whole DDIM run: StableDiffusionPipeline (DDIMScheduler from the snapshot's config, latents given) and the
    sequential solve of the adapter end at the same latents; and both decode through the same VAE."""
    prompt, steps = "a watercolor painting of a lighthouse at dawn", 6
    den, spec = build_denoiser("sd-v1-5", [prompt], cfg_scale=7.5, path=ckpts["sd"])
    pipe = _pipeline(ckpts["sd"])
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    noise = draw_noise([7], steps, spec["sample_shape"])
    with torch.no_grad():
        want = pipe(
            prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=7.5, eta=0.0,
            latents=noise.x_T.float(), output_type="latent",
        ).images  # fmt: skip
    sched = spec(steps)
    assert sched.timesteps.tolist()[::-1] == pipe.scheduler.timesteps.tolist()
    ours = solve(den, sched, noise, preset("sequential"))
    # the step arithmetic in float32 there and float64 here (step_loop_tol), the roundings of eps amplified by the
    # guidance combination (1 + 2 s); measured 1.4e-5 against this 1e-2, while a wrong prompt, timestep or
    # guidance moves x0 by O(1)
    tol = (1 + 2 * 7.5) * step_loop_tol(sched, float(want.abs().max()))
    torch.testing.assert_close(ours.x0.float(), want, rtol=0, atol=tol)
    img = den.decode(ours.x0)
    assert img.shape == (1, 3, 64, 64) and bool(torch.isfinite(img).all())


def test_sd_snapshot_whose_tokenizer_outgrows_its_text_encoder_is_refused(ckpts, tmp_path):
    import shutil

    copy = tmp_path / "sd"
    shutil.copytree(ckpts["sd"], copy)
    vocab = json.loads((copy / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    vocab["<my-concept>"] = len(vocab)
    (copy / "tokenizer" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer/ has 49409 tokens \(e.g. \['<my-concept>'\]\) but the text enc"):
        build_denoiser("sd-v1-5", ["a cat"], path=copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(WeightsNotFoundError, match=r"has no 'tokenizer' folder"):
        build_denoiser("sd-v1-5", ["a cat"], path=copy)


# ---------------------------------------------------------------- where the weights are: errors


def test_looks_like_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    for text in ["/abs/dit", "./dit", "../dit", "~/dit", "dit", "a/b/c", "weights/dit", "a\\b", "x/"]:
        assert looks_like_path(text), text
    for text in [DIT, SD, "owner/name.v2"]:
        assert not looks_like_path(text), text


@pytest.mark.parametrize("model, repo", [("dit-xl-2-256", DIT), ("sd-v1-5", SD)])
def test_missing_weights_path_fails_at_once_naming_it(tmp_path, monkeypatch, model, repo):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", _hub_must_not_be_asked)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)  # "weights/" does not exist here: still a local path, never a hub id
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        build_denoiser(model, [1 if model == "dit-xl-2-256" else "a cat"], path="weights/dit")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "no such folder 'weights/dit'" in msg and str(tmp_path / "weights" / "dit") in msg
    assert "hf download weights/dit" not in msg and f"hf download {repo} --local-dir DIR" in msg


def test_cli_missing_model_path_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from parataa.cli import main as cli

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", _hub_must_not_be_asked)
    missing = tmp_path / "weights" / "dit"
    rc = cli(["sample", "--model", "dit-xl-2-256", "--model-path", str(missing), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"no such folder '{missing}'" in err
    assert not (tmp_path / "o").exists()


def test_offline_hub_id_not_in_cache_is_one_clear_message(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", _hub_must_not_be_asked)
    with pytest.raises(WeightsNotFoundError) as e:
        build_denoiser("dit-xl-2-256", [1])
    msg = str(e.value)
    assert f"not in the Hugging Face cache {tmp_path / 'empty'}" in msg and "HF_HUB_OFFLINE is set" in msg
    assert f"hf download {DIT}" in msg and "--model-path DIR" in msg


def test_unreachable_hub_is_one_request_and_one_message(tmp_path, monkeypatch):
    """Online, a hub id missing from the cache costs one Hub request; its failure is one error, not retries."""
    import huggingface_hub

    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("timeout")))
        raise ConnectionError("Name or service not known")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    with pytest.raises(WeightsNotFoundError, match="the Hub did not answer for it .ConnectionError"):
        build_denoiser("sd-v1-5", ["a cat"])
    assert calls == [(SD, 10)]


def test_cached_snapshot_without_a_component_is_named(ckpts, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    snap = write_hub_cache(ckpts["dit"], cache, DIT)
    shutil.rmtree(snap / "vae")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=rf"cached snapshot {snap} has no 'vae' folder"):
        build_denoiser("dit-xl-2-256", [1])


# ---------------------------------------------------------------- identity of the weights


def test_weights_identity_of_a_path_and_of_the_hub_cache(ckpts, offline_cache):
    by_path = weights_identity("sd-v1-5", ckpts["sd"])
    assert by_path["synthetic"] is True and by_path["synthetic_marker"]["seed"] == 4
    assert by_path["source"]["kind"] == "path" and by_path["source"]["path"] == str(ckpts["sd"].resolve())
    assert set(by_path["files"]) == {
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    for rel, entry in by_path["files"].items():
        data = (ckpts["sd"] / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    by_hub = weights_identity("sd-v1-5")  # the published hub id, found in the offline cache
    snap, rev = cached_snapshot(SD, offline_cache)
    assert by_hub["source"] == {"kind": "hub", "given": SD, "repo_id": SD, "revision": rev, "snapshot": str(snap)}
    assert by_hub["files"] == by_path["files"] and by_hub["configs"] == by_path["configs"] and by_hub["synthetic"]
    embedded = weights_identity("tiny-dit")
    assert embedded["synthetic"] is False
    assert list(embedded["files"]) == ["transformer/diffusion_pytorch_model.safetensors"]
    assert weights_identity("gmm")["source"] == {"kind": "analytic"}


def test_weight_files_follow_the_loaders_preference(tmp_path):
    d = tmp_path / "text_encoder"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"bin")
    assert weight_files(d, "transformers") == [d / "pytorch_model.bin"]
    (d / "model.safetensors").write_bytes(b"st")
    (d / "model.fp16.safetensors").write_bytes(b"variant")  # a variant the loaders do not read
    assert weight_files(d, "transformers") == [d / "model.safetensors"]
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [p.name for p in weight_files(d, "transformers")] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model.safetensors"):
        weight_files(d, "diffusers")


def test_file_hash_is_cached_but_follows_changes(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"one")
    first = _sha256(f)
    assert first == hashlib.sha256(b"one").hexdigest() and _sha256(f) == first
    f.write_bytes(b"two!")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 1))
    assert _sha256(f) == hashlib.sha256(b"two!").hexdigest()


@pytest.mark.gpu
@pytest.mark.parametrize("model, cond", [("dit-xl-2-256", 207), ("sd-v1-5", "a cat")])
def test_synthetic_checkpoint_built_on_the_gpu_loads_and_runs_there(tmp_path, model, cond):
    path = write_synthetic(model, tmp_path / model, size="tiny", seed=0, device="cuda")
    assert json.loads((path / MARKER).read_text())["init_device"] == "cuda"
    den, spec = build_denoiser(model, [cond], path=path, device="cuda")
    x = torch.randn(2, *spec["sample_shape"], dtype=torch.float64, device="cuda")
    out = den(x, torch.tensor([900.0, 10.0], device="cuda"), torch.tensor([0, 0], device="cuda"))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert bool(torch.isfinite(den.decode(x)).all())
