"""The Gradio Space (spaces/rewrite/app.py) through gradio_client: rewrite, download, isolation, errors.

The app runs in this process on 127.0.0.1 with the embedded faces model; masks are sent as RGBA PNG files
(the alpha marks the painted pixels), as the browser's image editor sends its brush layer.
"""

from __future__ import annotations

import copy
import socket
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from space_loader import APP, load_app

pytest.importorskip("gradio", reason="the Space tests need the `demo` extra (gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client")

import gan_rewrite as gr  # noqa: E402
from gan_rewrite.space import SharedModels, heatmap_picture, preview_picture  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),  # gradio's own pandas calls
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

MODEL = "dcgan-faces-64"
SIZE = 64



def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top:bottom, left:right] = True
    return mask


EYES = rect(24, 36, 12, 52)
GLASSES = rect(23, 41, 9, 56)  # seed 35 wears dark glasses there (examples/make_examples.py)


def editor_value(mask: np.ndarray | None, folder: Path, zoom: int = 4) -> dict:
    """What the image editor sends: a brush layer as an RGBA PNG, painted (opaque magenta) on ``mask``."""
    from gradio_client import handle_file

    if mask is None:
        return {"background": None, "layers": [], "composite": None}
    big = np.kron(mask, np.ones((zoom, zoom), bool))
    rgba = np.zeros((*big.shape, 4), np.uint8)
    rgba[big] = (255, 0, 255, 255)
    path = folder / f"mask-{uuid.uuid4().hex}.png"  # unique: sessions upload concurrently
    Image.fromarray(rgba, "RGBA").save(path)
    return {"background": None, "layers": [handle_file(str(path))], "composite": None}


@pytest.fixture(scope="module")
def space(dcgan_faces, tmp_path_factory):
    """The app on a free port of 127.0.0.1, sharing the session's faces model; closed after the module."""
    app = load_app()
    models = SharedModels(stats_n=300)
    models.add(MODEL, dcgan_faces)
    demo = app.build_demo(MODEL, models=models)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "app": app, "models": models, "G": dcgan_faces,
               "tmp": tmp_path_factory.mktemp("space")}  # fmt: skip
    finally:
        demo.close()


def client(space):
    return gradio_client.Client(space["url"], verbose=False, download_files=str(space["tmp"] / "downloads"))


def rewrite(c, space, *, context=EYES, copy=GLASSES, paste=EYES, seeds=(1, 35, 1), strength=1.0, layer="layer3"):
    folder = space["tmp"]
    return c.predict(
        MODEL,
        layer,
        seeds[0],
        editor_value(context, folder),
        seeds[1],
        editor_value(copy, folder),
        seeds[2],
        editor_value(paste, folder),
        strength,
        api_name="/rewrite",
    )


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def expected_after(space, *, context=EYES, copy=GLASSES, paste=EYES, seeds=(1, 35, 1), strength=1.0) -> np.ndarray:
    """The after row computed by the library alone (same statistics), without the app."""
    G, lock = space["models"].get(MODEL)
    with lock:
        rw = gr.Rewriter(G, layer="layer3")
        rw.set_stats(space["models"].stats(MODEL, "layer3"))
        rw.add_context(seeds[0], context)
        rw.set_copy(seeds[1], copy)
        rw.set_paste(seeds[2], paste)
        delta = rw.solve(rank=1)  # what the app asks for: the library defaults
        G.load_rule(delta, name="expected", scale=strength)
        try:
            after = G.sample(space["app"].PREVIEW_SEEDS)
        finally:
            G.unload_rules()
    return np.asarray(labelled(space, after), dtype=np.int16)


def labelled(space, samples):
    """The preview row the app shows: the samples with their seeds written under them."""
    return preview_picture(samples, seeds=space["app"].PREVIEW_SEEDS)


def weights(G) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


def test_rewrite_download_and_reload_reproduces_after_grid(space):
    G = space["G"]
    c = client(space)
    before_path, after_path, files, text, *_ = rewrite(c, space)
    before, after = pixels(before_path), pixels(after_path)
    assert before.shape == after.shape
    assert np.abs(before - after).max() > 20, "the rule changed nothing visible"
    assert "copy seed 35" in text

    paths = [Path(f if isinstance(f, str) else f["path"]) for f in files]
    names = sorted(p.name for p in paths)
    assert names == ["rule.json", "rule.safetensors"]
    rule = gr.RuleDelta.load(next(p for p in paths if p.suffix == ".safetensors"))
    assert rule.spec["copy"]["seed"] == 35 and rule.layer_names == ["layer3"]

    _, lock = space["models"].get(MODEL)
    with lock:
        G.load_rule(rule, name="downloaded")
        try:
            again = np.asarray(labelled(space, G.sample(space["app"].PREVIEW_SEEDS)), dtype=np.int16)
        finally:
            G.unload_rules()
    assert np.abs(again - after).max() <= 1
    np.testing.assert_array_equal(
        pixels(before_path), np.asarray(labelled(space, G.sample(space["app"].PREVIEW_SEEDS)))
    )

    # strength and revert act on this session's last rule
    _, weaker, _, text, *_ = c.predict(MODEL, 0.0, api_name="/set_strength")
    assert np.abs(pixels(weaker) - before).max() <= 1 and "strength 0" in text
    _, reverted, files, text, *_ = c.predict(MODEL, api_name="/revert")
    assert np.abs(pixels(reverted) - before).max() <= 1 and not files and "No rules" in text

    # load the downloaded rule back from a file
    _, loaded, _, text, *_ = c.predict(
        MODEL,
        gradio_client.handle_file(str(next(p for p in paths if p.suffix == ".safetensors"))),
        api_name="/load_rule",
    )
    assert np.abs(pixels(loaded) - after).max() <= 1 and "loaded rule.safetensors" in text


def test_concurrent_sessions_are_isolated(space):
    G = space["G"]
    original = weights(G)
    requests = [
        dict(seeds=(1, 35, paste), strength=0.5 + 0.2 * i) for i, paste in enumerate([1, 7, 22, 41, 47, 57, 66, 86])
    ]
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            c = client(space)
            results[i] = rewrite(c, space, **requests[i])
        except Exception as err:  # noqa: BLE001 (reported below)
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, request in enumerate(requests):
        result = results.get(i)
        assert not isinstance(result, Exception) and result is not None, f"session {i}: {result!r}"
        got = pixels(result[1])
        assert np.abs(got - expected_after(space, **request)).max() <= 1, f"session {i} got another rule's result"
    grids = [pixels(results[i][1]) for i in range(len(requests))]
    for i in range(len(grids)):
        for j in range(i):
            assert np.abs(grids[i] - grids[j]).max() > 1, f"sessions {i} and {j} look alike: the test tests nothing"
    after = weights(G)
    assert G.active_rules == []
    for key, value in original.items():
        assert torch.equal(value, after[key]), f"{key} of the shared model changed"


@pytest.mark.parametrize(
    ("missing", "message"),
    [("context", "Nothing painted for the context"), ("copy", "Nothing painted for the copy")],
)
def test_errors_are_reported_and_the_session_keeps_working(space, missing, message):
    c = client(space)
    kwargs = {missing: None}
    with pytest.raises(Exception, match=message):
        rewrite(c, space, **kwargs)
    _, after_path, files, text, *_ = rewrite(c, space)
    assert len(files) == 2 and "copy seed 35" in text


def test_a_bad_rule_file_is_refused(space):
    c = client(space)
    bad = space["tmp"] / "not-a-rule.safetensors"
    bad.write_bytes(b"this is not safetensors")
    with pytest.raises(Exception, match="Not a usable rule file"):
        c.predict(MODEL, gradio_client.handle_file(str(bad)), api_name="/load_rule")
    _, after_path, _, text, *_ = c.predict(MODEL, api_name="/revert")  # the session still answers
    assert "No rules" in text


def test_a_rule_for_another_model_is_refused(space, tmp_path):
    c = client(space)
    files = rewrite(c, space)[2]
    path = next(Path(f if isinstance(f, str) else f["path"]) for f in files if str(f).endswith(".safetensors"))
    assert path.is_file()
    foreign_rule(space).save(tmp_path / "foreign.safetensors")
    with pytest.raises(Exception, match="does not fit"):
        c.predict(MODEL, gradio_client.handle_file(str(tmp_path / "foreign.safetensors")), api_name="/load_rule")
    assert "copy seed 35" in c.predict(MODEL, 1.0, api_name="/set_strength")[3]  # the session's rule is still there


def test_demo_command_is_wired():
    from gan_rewrite.cli import build_parser, cmd_demo

    args = build_parser().parse_args(["demo", "--model", MODEL, "--port", "7861", "--share"])
    assert args.run is cmd_demo and (args.model, args.port, args.share) == (MODEL, 7861, True)
    assert APP.is_file()  # cmd_demo launches this file's `main`


def test_push_the_rule_to_the_hub(space, hub):
    c = client(space)
    with pytest.raises(Exception, match="Nothing to push"):
        c.predict(MODEL, hub.repo_id("rule"), hub.token, api_name="/push")
    files = rewrite(c, space)[2]
    repo_id = hub.repo_id("glasses-rule")
    text = c.predict(MODEL, repo_id, hub.token, api_name="/push")
    assert repo_id in text
    pushed = gr.RuleDelta.load(repo_id)
    local = gr.RuleDelta.load(
        next(Path(f if isinstance(f, str) else f["path"]) for f in files if str(f).endswith(".safetensors"))
    )
    assert torch.equal(pushed.layers["layer3"].lam, local.layers["layer3"].lam)
    assert {"rule.safetensors", "rule.json", "preview.png", "README.md"} <= set(hub.api().list_repo_files(repo_id))


def library_rewriter(space, seed=1, context=EYES):
    """A Rewriter built by the library alone with the Space's statistics and one context. Hold the lock."""
    G, _ = space["models"].get(MODEL)
    rw = gr.Rewriter(G, layer="layer3")
    rw.set_stats(space["models"].stats(MODEL, "layer3"))
    rw.add_context(seed, context)
    return rw


def test_find_matches_ranks_seeds_as_the_library_does(space):
    c = client(space)
    with pytest.raises(Exception, match="Nothing painted for the context"):
        c.predict(MODEL, "layer3", 0, 1, editor_value(None, space["tmp"]), api_name="/find_matches")
    found = c.predict(MODEL, "layer3", 0, 1, editor_value(EYES, space["tmp"]), api_name="/find_matches")
    seeds = [int(item["caption"].split()[1]) for item in found]
    scores = [float(item["caption"].rsplit(" ", 1)[1]) for item in found]
    assert len(seeds) == 8 and scores == sorted(scores, reverse=True)
    assert all(16 <= s < 80 for s in seeds)  # the 64 seeds after page 0

    G, lock = space["models"].get(MODEL)
    with lock:
        expected = library_rewriter(space).search(range(16, 80))
        first = G.sample(expected.seeds[:1])[0]
    assert seeds == expected.seeds[:8]
    np.testing.assert_allclose(scores, expected.best[:8].numpy(), atol=1e-3)
    picture = heatmap_picture(first, expected.heatmaps[0], 128)
    np.testing.assert_array_equal(pixels(found[0]["image"]), np.asarray(picture, dtype=np.int16))


def png_header(width: int, height: int) -> bytes:
    """The first bytes of an RGBA PNG of ``width × height``: a valid header and no pixels (a "PNG bomb")."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))


def hostile_picture(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}-{uuid.uuid4().hex}.png"
    if kind == "text":
        path.write_text("not a picture at all\n")
    elif kind == "huge":
        path.write_bytes(png_header(6000, 6000))  # 36 Mpixels, about 150 MB once decoded
    else:  # "truncated": a readable header, half the pixels
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 4), np.uint8), "RGBA").save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize(("kind", "part"), [("text", "layers"), ("huge", "background"), ("truncated", "composite")])
def test_a_hostile_editor_picture_is_refused(space, kind, part):
    from gradio_client import handle_file

    c = client(space)
    value = editor_value(EYES, space["tmp"])
    bad = handle_file(str(hostile_picture(kind, space["tmp"])))
    value[part] = [bad] if part == "layers" else bad
    with pytest.raises(Exception, match="Cannot use the picture sent to the Context"):
        c.predict(MODEL, "layer3", 0, 1, value, api_name="/find_matches")
    assert len(c.predict(MODEL, "layer3", 0, 1, editor_value(EYES, space["tmp"]), api_name="/find_matches")) == 8


def test_editor_pictures_of_another_size_are_resized(space):
    from gradio_client import handle_file

    odd = space["tmp"] / "odd-background.png"
    Image.new("RGB", (300, 200), "grey").save(odd)
    context = editor_value(EYES, space["tmp"], zoom=8)  # a 512 × 512 brush layer on a 300 × 200 background
    context["background"] = context["composite"] = handle_file(str(odd))
    folder = space["tmp"]
    result = client(space).predict(
        MODEL, "layer3", 1, context, 35, editor_value(GLASSES, folder), 1, editor_value(EYES, folder), 1.0,
        api_name="/rewrite",
    )  # fmt: skip
    assert np.abs(pixels(result[1]) - expected_after(space)).max() <= 1


def library_rule(space, path: Path, *, foreign: bool = False) -> Path:
    if foreign:
        foreign_rule(space).save(path)
        return path
    _, lock = space["models"].get(MODEL)
    with lock:
        rw = library_rewriter(space)
        rw.set_copy(35, GLASSES)
        rw.set_paste(1, EYES)
        rule = rw.solve(rank=1)
    rule.save(path)
    return path


def foreign_rule(space) -> gr.RuleDelta:
    """The usual rule, really solved on another model: the faces model with its layer3 weight 0.1 % larger.

    Its recorded base hash is that model's own, so the Space can only refuse it by hashing the weights."""
    G, lock = space["models"].get(MODEL)
    with lock:
        other = copy.deepcopy(G)
    with torch.no_grad():
        other.layer_module("layer3").weight.mul_(1.001)
    rw = gr.Rewriter(other, layer="layer3")
    rw.set_stats(space["models"].stats(MODEL, "layer3"))
    rw.add_context(1, EYES)
    rw.set_copy(35, GLASSES)
    rw.set_paste(1, EYES)
    return rw.solve(rank=1)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("picture", "Invalid file type"), ("truncated", "Not a usable rule file"), ("not-a-rule", "is not a gan-rewrite")],
)
def test_a_hostile_rule_file_is_refused(space, tmp_path, kind, message):
    import safetensors.torch

    if kind == "picture":
        path = hostile_picture("truncated", tmp_path)
    elif kind == "truncated":
        path = library_rule(space, tmp_path / "rule.safetensors")
        path.write_bytes(path.read_bytes()[: path.stat().st_size - 40])
    else:
        path = tmp_path / "weights.safetensors"
        safetensors.torch.save_file({"weight": torch.zeros(3, 3)}, str(path))
    c = client(space)
    with pytest.raises(Exception, match=message):  # gradio itself refuses a file not named .safetensors
        c.predict(MODEL, gradio_client.handle_file(str(path)), api_name="/load_rule")
    assert "No rules" in c.predict(MODEL, api_name="/revert")[3]  # the session still answers


def test_hostile_sessions_leave_a_concurrent_session_alone(space, tmp_path):
    from gradio_client import handle_file

    G = space["G"]
    original = weights(G)
    foreign = library_rule(space, tmp_path / "foreign.safetensors", foreign=True)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 1000)

    def bad_picture(c):
        value = editor_value(EYES, space["tmp"])
        value["layers"] = [handle_file(str(hostile_picture("text", tmp_path)))]
        return c.predict(MODEL, "layer3", 0, 1, value, api_name="/find_matches")

    attacks = [
        bad_picture,
        lambda c: c.predict(MODEL, handle_file(str(foreign)), api_name="/load_rule"),
        lambda c: c.predict(MODEL, handle_file(str(junk)), api_name="/load_rule"),
    ]
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            c = client(space)
            results[i] = attacks[i](c) if i < len(attacks) else rewrite(c, space, strength=0.7)
        except Exception as err:  # noqa: BLE001 (checked below)
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(attacks) + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    messages = ["Cannot use the picture", "does not fit", "Not a usable rule file"]
    for i, message in enumerate(messages):
        assert isinstance(results.get(i), Exception) and message in str(results[i]), f"attack {i}: {results.get(i)!r}"
    good = results.get(len(attacks))
    assert not isinstance(good, Exception) and good is not None, repr(good)
    assert np.abs(pixels(good[1]) - expected_after(space, strength=0.7)).max() <= 1
    assert G.active_rules == []
    assert all(torch.equal(value, weights(G)[key]) for key, value in original.items())


def library_delta(space, *, contexts=((1, EYES),), copy=(35, GLASSES), paste=(1, EYES)):
    """The rule the library alone solves (the Space's statistics) from these context examples."""
    G, lock = space["models"].get(MODEL)
    with lock:
        rw = gr.Rewriter(G, layer="layer3")
        rw.set_stats(space["models"].stats(MODEL, "layer3"))
        for seed, mask in contexts:
            rw.add_context(seed, mask)
        rw.set_copy(*copy)
        rw.set_paste(*paste)
        return rw.solve(rank=1)  # what the app asks for: the library defaults


def library_after(space, rules) -> np.ndarray:
    """The after row with ``rules`` (``(delta, scale)`` pairs) loaded by the library alone."""
    from gan_rewrite.space import rules_applied

    G, lock = space["models"].get(MODEL)
    with lock, rules_applied(G, rules):
        after = G.sample(space["app"].PREVIEW_SEEDS)
    return np.asarray(labelled(space, after), dtype=np.int16)


def test_load_a_rule_from_the_hub(space, hub, monkeypatch):
    rule = library_delta(space)
    repo_id = hub.repo_id("rule")
    rule.push_to_hub(repo_id, preview_seeds=None, token=hub.token)
    foreign_id = hub.repo_id("foreign-rule")
    foreign_rule(space).push_to_hub(foreign_id, preview_seeds=None, token=hub.token)

    c = client(space)
    _, after, _, text, *_ = c.predict(MODEL, repo_id, api_name="/load_hub_rule")
    assert np.abs(pixels(after) - library_after(space, [(rule, 1.0)])).max() <= 1
    assert f"loaded {repo_id}" in text

    with pytest.raises(Exception, match="does not fit"):
        c.predict(MODEL, foreign_id, api_name="/load_hub_rule")
    with pytest.raises(Exception, match="Cannot load the rule"):
        c.predict(MODEL, hub.repo_id("no-such-rule"), api_name="/load_hub_rule")
    for not_a_repo in ("", "/etc/passwd", "../rule", "tests/conftest.py"):
        with pytest.raises(Exception, match="Give the rule's Hub repo as owner/name"):
            c.predict(MODEL, not_a_repo, api_name="/load_hub_rule")
    hub.go_away(monkeypatch)
    with pytest.raises(Exception, match="Cannot load the rule"):
        c.predict(MODEL, hub.repo_id("never-fetched"), api_name="/load_hub_rule")
    text = c.predict(MODEL, 1.0, api_name="/set_strength")[3]  # the session goes on, its rule still there
    assert f"loaded {repo_id}" in text


def test_rules_are_toggled_scaled_and_removed_one_by_one(space):
    c = client(space)
    first, second = library_delta(space), library_delta(space, paste=(22, EYES))
    rewrite(c, space)
    _, both, *_ = rewrite(c, space, seeds=(1, 35, 22))
    assert np.abs(pixels(both) - library_after(space, [(first, 1.0), (second, 1.0)])).max() <= 1

    _, after, _, text, selected, enabled, strength, *_ = c.predict(MODEL, 0, False, 1.0, api_name="/edit_rule")
    assert np.abs(pixels(after) - library_after(space, [(second, 1.0)])).max() <= 1
    assert (selected["value"], enabled, strength) == (0, False, 1.0) and "(off)" in text
    assert len(selected["choices"]) == 2
    _, after, *_ = c.predict(MODEL, 0, True, 0.5, api_name="/edit_rule")
    assert np.abs(pixels(after) - library_after(space, [(first, 0.5), (second, 1.0)])).max() <= 1
    _, after, *_ = c.predict(MODEL, 1, True, 0.3, api_name="/edit_rule")
    expected = library_after(space, [(first, 0.5), (second, 0.3)])
    assert np.abs(pixels(after) - expected).max() <= 1
    assert np.abs(expected - library_after(space, [(first, 0.5), (second, 1.0)])).max() > 1  # scales matter
    assert tuple(c.predict(MODEL, 0, api_name="/select_rule")) == (True, 0.5)

    _, after, _, text, *_ = c.predict(MODEL, 1, api_name="/remove_rule")
    assert np.abs(pixels(after) - library_after(space, [(first, 0.5)])).max() <= 1
    assert "paste seed 22" not in text and "paste seed 1," in text
    with pytest.raises(Exception, match="1 is not in the list of choices"):  # no such rule any more (gradio refuses)
        c.predict(MODEL, 1, api_name="/remove_rule")


def test_several_context_examples(space):
    c = client(space)
    two = library_delta(space, contexts=((1, EYES), (7, EYES)))
    one = library_delta(space)
    assert not torch.allclose(two.layers["layer3"].lam, one.layers["layer3"].lam)

    def rule_of(result) -> gr.RuleDelta:
        files = [Path(f if isinstance(f, str) else f["path"]) for f in result[2]]
        return gr.RuleDelta.load(next(p for p in files if p.suffix == ".safetensors"))

    assert "1 saved context" in c.predict(MODEL, 1, editor_value(EYES, space["tmp"]), api_name="/add_context")[0]
    assert "2 saved context" in c.predict(MODEL, 7, editor_value(EYES, space["tmp"]), api_name="/add_context")[0]
    result = rewrite(c, space, context=None)  # the saved contexts only
    torch.testing.assert_close(rule_of(result).layers["layer3"].lam, two.layers["layer3"].lam, rtol=1e-4, atol=1e-5)
    assert np.abs(pixels(result[1]) - library_after(space, [(two, 1.0)])).max() <= 1

    found = c.predict(MODEL, "layer3", 0, 1, editor_value(None, space["tmp"]), api_name="/find_matches")
    G, lock = space["models"].get(MODEL)
    with lock:
        rw = library_rewriter(space)
        rw.add_context(7, EYES)
        expected = rw.search(range(16, 80))
    assert [int(item["caption"].split()[1]) for item in found] == expected.seeds[:8]

    assert "No saved contexts" in c.predict(MODEL, api_name="/clear_contexts")[0]
    with pytest.raises(Exception, match="Nothing painted for the context"):
        rewrite(c, space, context=None)
    c.predict(MODEL, 1, editor_value(EYES, space["tmp"]), api_name="/add_context")[0]
    result = rewrite(c, space, seeds=(7, 35, 1))  # one saved context and the editor's painting
    torch.testing.assert_close(rule_of(result).layers["layer3"].lam, two.layers["layer3"].lam, rtol=1e-4, atol=1e-5)


def test_rewrite_picks_the_layer_and_says_how_the_context_carries_over(space):
    """Layer "auto" (the app's default) rewrites the layer the library's score picks, and the score and its
    advice are shown beside Rewrite."""
    c = client(space)
    assert c.predict(MODEL, api_name="/change_model")["value"] == "auto"
    result = rewrite(c, space, layer="auto")
    G, lock = space["models"].get(MODEL)
    with lock:
        rw = gr.Rewriter(G, layer="auto")
        rw.set_stats(space["models"].stats(MODEL, G.config.default_layer))
        rw.add_context(1, EYES)
        best = rw.choose_layer()
    text = result[-1]
    assert f"**{best} {rw.chosen.layers[best].auc:.2f}**" in text, text
    assert rw.chosen.advice in text
    assert "fitting the final images of the paste sample and of every context sample" in text  # the default solve
    assert all(f"{name} {s.auc:.2f}" in text for name, s in rw.chosen.layers.items())
    fixed = rewrite(c, space, layer="layer3")[-1]
    assert "**layer3" in fixed and "AUC" in fixed
